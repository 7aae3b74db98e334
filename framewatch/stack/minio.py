"""MinIO server, built once with `go install` and cached."""

from __future__ import annotations

import os
import urllib.request

from framewatch.stack.base import LocalService, require_tool, run_with_progress

MINIO_MODULE = "github.com/minio/minio@latest"


class Minio(LocalService):
    name = "minio"
    port = 19000
    console_port = 19001

    def install(self) -> None:
        if os.path.exists(self.binary):
            return
        go = require_tool("go", "install Go 1.24+ to build MinIO (https://go.dev/dl or Debian: apt-get install golang)")
        env = {**os.environ, "GOBIN": str(self.home.cache / "bin"), "CGO_ENABLED": "0"}
        run_with_progress([go, "install", "-x" if os.environ.get("FRAMEWATCH_VERBOSE") else "-v", MINIO_MODULE],
                          "building MinIO (first time only, a few minutes)", env=env)

    def command(self) -> list[str]:
        return [self.binary, "server", str(self.data), "--address", self.address,
                "--console-address", f"{self.host}:{self.console_port}", "--quiet"]

    def environment(self) -> dict[str, str]:
        creds = self.home.credentials()
        return {"MINIO_ROOT_USER": creds["minio_user"], "MINIO_ROOT_PASSWORD": creds["minio_password"],
                "MINIO_BROWSER": "off", "MINIO_UPDATE": "off"}

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.address}/minio/health/ready", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def env(self) -> dict[str, str]:
        creds = self.home.credentials()
        return {"FRAMEWATCH_MINIO_ENDPOINT": self.address, "FRAMEWATCH_MINIO_ACCESS_KEY": creds["minio_user"],
                "FRAMEWATCH_MINIO_SECRET_KEY": creds["minio_password"]}
