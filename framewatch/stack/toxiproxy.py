"""Toxiproxy between framewatch and Kafka, for the fault tests: latency, stalls and resets made by a real TCP proxy,
never simulated in the code under test. Built once with `go install`, like MinIO.

The single broker has a listener of its own for it (`Kafka.proxied_port`) that advertises the proxy's address, so a
client bootstrapped through the proxy (`PROXIED_KAFKA`) also reaches the broker through it for every later request.
`KafkaLink` adds and removes toxics on that proxy through Toxiproxy's HTTP API.
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

from framewatch.stack.base import LocalService, require_tool, run_with_progress
from framewatch.stack.kafka import PROXIED_ADVERTISED_PORT, Kafka

TOXIPROXY_MODULE = "github.com/Shopify/toxiproxy/v2/cmd/server@v2.5.0"


class Toxiproxy(LocalService):
    name = "toxiproxy"
    port = 18474  # its HTTP API

    @property
    def binary(self) -> str:
        return str(self.home.cache / "bin" / "server")  # the name `go install` gives cmd/server

    def install(self) -> None:
        if os.path.exists(self.binary):
            return
        go = require_tool("go", "install Go to build Toxiproxy (https://go.dev/dl or Debian: apt-get install golang)")
        env = {**os.environ, "GOBIN": str(self.home.cache / "bin"), "CGO_ENABLED": "0"}
        run_with_progress([go, "install", TOXIPROXY_MODULE], "building Toxiproxy (first time only)", env=env)

    def prepare(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        kafka = Kafka(self.home)
        proxies = [{"name": "kafka", "listen": f"{self.host}:{PROXIED_ADVERTISED_PORT}",
                    "upstream": f"{kafka.host}:{kafka.proxied_port}", "enabled": True}]
        (self.data / "proxies.json").write_text(json.dumps(proxies))

    def command(self) -> list[str]:
        return [self.binary, "-host", self.host, "-port", str(self.port), "-config", str(self.data / "proxies.json")]

    def env(self) -> dict[str, str]:
        return {}  # only the fault tests use it, through `PROXIED_KAFKA` and `KafkaLink`


PROXIED_KAFKA = f"{Toxiproxy.host}:{PROXIED_ADVERTISED_PORT}"


class KafkaLink:
    """The proxy between the processes of a fault test and Kafka: toxics added and removed at run time."""

    def __init__(self, api: str = f"http://{Toxiproxy.host}:{Toxiproxy.port}", proxy: str = "kafka") -> None:
        self.url = f"{api}/proxies/{proxy}"

    def add(self, name: str, kind: str, stream: str = "downstream", **attributes: Any) -> None:
        """A toxic: `latency` (latency, jitter in ms), `timeout` (stalls the data; timeout 0: for as long as it is
        there), `reset_peer`, `bandwidth` (rate in KB/s), …; `stream` downstream (to the client) or upstream."""
        self._call("POST", "/toxics", {"name": name, "type": kind, "stream": stream, "attributes": attributes})

    def remove(self, name: str) -> None:
        self._call("DELETE", f"/toxics/{name}")

    def clear(self) -> None:
        for toxic in self._call("GET", "/toxics") or []:
            self.remove(toxic["name"])

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            text = answer.read()
        return json.loads(text) if text else None
