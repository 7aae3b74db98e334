"""mediamtx, the RTSP server (which also serves each stream as HLS) the tests and benchmarks publish cameras to,
built once from the Go module proxy.

`go install` refuses the module (the proxy does not list its versions, and its build embeds files that its
`go generate` downloads from GitHub), so the pinned release is downloaded as a module, copied, given the two
generated files (its version; an empty HLS player, HLS being off) and built with `go build`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from framewatch.stack.base import (
    LocalService,
    StackError,
    require_tool,
    run_with_progress,
    write_private,
)

MEDIAMTX_MODULE = "github.com/bluenviron/mediamtx"
MEDIAMTX_VERSION = "v1.12.3"
VIEWER = "viewer"

CONFIG = """logLevel: warn
readTimeout: 10s
writeTimeout: 10s
api: no
metrics: no
rtmp: no
hls: yes
hlsAddress: {host}:{hls}
hlsVariant: mpegts
hlsAlwaysRemux: yes
hlsSegmentCount: 3
hlsSegmentDuration: 1s
webrtc: no
srt: no
rtsp: yes
rtspTransports: [udp, tcp]
rtspAddress: {host}:{port}
rtpAddress: {host}:{rtp}
rtcpAddress: {host}:{rtcp}
authMethod: internal
authInternalUsers:
- user: any
  pass:
  ips: []
  permissions:
  - action: publish
  - action: read
    path: "~^cam"
- user: {viewer}
  pass: {password}
  ips: []
  permissions:
  - action: read
paths:
  all_others:
"""


def server_config(host: str, port: int, hls_port: int, viewer_password: str) -> str:
    """The server's YAML: RTSP on `port` (RTP and RTCP on the next even pair), HLS on `hls_port`."""
    return CONFIG.format(host=host, port=port, rtp=port + 2, rtcp=port + 3, hls=hls_port, viewer=VIEWER,
                         password=viewer_password)


class Mediamtx(LocalService):
    """Anyone may publish; paths starting with `cam` are readable by anyone, others only by the viewer account."""

    name = "mediamtx"
    port = 18554
    hls_port = 18888

    def install(self) -> None:
        if os.path.exists(self.binary):
            return
        go = require_tool("go", "install Go 1.24+ to build mediamtx (https://go.dev/dl, or Debian's golang)")
        module = f"{MEDIAMTX_MODULE}@{MEDIAMTX_VERSION}"
        downloaded = subprocess.run([go, "mod", "download", "-json", module], capture_output=True, text=True,
                                    env={**os.environ, "GOFLAGS": "-mod=mod"})
        if downloaded.returncode != 0:
            raise StackError(f"downloading {module} failed: {downloaded.stdout.strip()} {downloaded.stderr.strip()}")
        source = self.home.cache / "mediamtx-src"
        shutil.rmtree(source, ignore_errors=True)
        shutil.copytree(json.loads(downloaded.stdout)["Dir"], source)
        for path in source.rglob("*"):
            path.chmod(path.stat().st_mode | 0o200)  # the module cache is read-only
        (source / "internal" / "core" / "VERSION").write_text(MEDIAMTX_VERSION)
        (source / "internal" / "servers" / "hls" / "hls.min.js").write_text("")
        run_with_progress([go, "build", "-o", self.binary, "."], "building mediamtx (first time only, a few minutes)",
                          env={**os.environ, "CGO_ENABLED": "0"}, cwd=source)
        shutil.rmtree(source, ignore_errors=True)

    @property
    def config_path(self) -> Path:
        return self.data / "mediamtx.yml"

    def prepare(self) -> None:
        write_private(self.config_path, server_config(self.host, self.port, self.hls_port,
                                                      self.home.credentials()["camera_password"]))

    def command(self) -> list[str]:
        return [self.binary, str(self.config_path)]

    def env(self) -> dict[str, str]:
        """Where cameras are published (rtsp://HOST:PORT/<path>, also served as HLS at
        http://HOST:HLS_PORT/<path>/index.m3u8) and the viewer's credentials (user:password)."""
        return {"FRAMEWATCH_RTSP_SERVER": self.address, "FRAMEWATCH_HLS_SERVER": f"{self.host}:{self.hls_port}",
                "FRAMEWATCH_RTSP_VIEWER": f"{VIEWER}:{self.home.credentials()['camera_password']}"}
