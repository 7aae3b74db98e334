"""`framewatch bridge webhook URL [--clips]`: every alert POSTed to a URL as the alert feed's JSON (`AlertMessage`),
and with `--clips` each alert's clip message too (`ClipMessage`).

Clips are asked for because a receiver written for alerts alone may fail on another body with a 5xx, which would
hold every alert after it back (a 5xx is retried until it succeeds); on MQTT they have topics of their own.

Each request carries `X-Framewatch-Kind` (`alert` or `clip`), `X-Framewatch-Alert-Id` (deduplicate on the two:
delivery is at least once, and an alert's clip message has the alert's id) and, when `FRAMEWATCH_WEBHOOK_SECRET`
is set, `X-Framewatch-Signature: sha256=<hex HMAC-SHA256 of the body with the secret>`. A 2xx answer delivers the
message; a 5xx, a 429, a timeout or a refused connection is retried with backoff (up to a minute apart) until it
succeeds; any other answer (a 4xx: the receiver refuses it for good) is logged, counted and skipped."""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

import aiohttp
from mode import Service

from framewatch.bridges.feed import EVERY_KIND, FeedConsumer
from framewatch.metrics import Tally
from framewatch.retry import Backoff, logged
from framewatch.schemas.config import Config
from framewatch.schemas.feed import FeedMessage

log = logging.getLogger("framewatch.bridge.webhook")

DELIVERY_BACKOFF = Backoff(first_s=1.0, max_s=60.0)
REQUESTS = Tally("framewatch_bridge_webhook_requests_total", "Webhook requests, by answer (2xx, 4xx, 5xx, error)",
                 ["answer"])
TIMEOUT = aiohttp.ClientTimeout(total=10)


class RetryableAnswer(Exception):
    """The receiver could not take the message now (5xx, 429); sending it again may work."""


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookBridge(Service):
    def __init__(self, config: Config, url: str, secret: str = "", clips: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.url = url
        self.secret = secret
        self.feed = FeedConsumer(config, "webhook", self.deliver, EVERY_KIND if clips else ("alert",))
        self.add_dependency(self.feed)
        self._http: aiohttp.ClientSession | None = None

    async def on_start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=TIMEOUT)

    async def on_stop(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def deliver(self, message: FeedMessage) -> None:
        body = message.to_bytes()
        headers = {"Content-Type": "application/json", "X-Framewatch-Kind": message.kind,
                   "X-Framewatch-Alert-Id": message.alert_id}
        if self.secret:
            headers["X-Framewatch-Signature"] = signature(self.secret, body)
        await DELIVERY_BACKOFF.call(self._post, self._worth_retrying,
                                    logged(log, f"posting the {message.kind} message of alert {message.alert_id}"),
                                    body, headers)

    def _worth_retrying(self, error: BaseException) -> bool:
        return isinstance(error, RetryableAnswer | aiohttp.ClientError | TimeoutError) and not self.should_stop

    async def _post(self, body: bytes, headers: dict[str, str]) -> None:
        assert self._http is not None, "the bridge posts once started"
        try:
            async with self._http.post(self.url, data=body, headers=headers) as answer:
                status = answer.status
        except (aiohttp.ClientError, TimeoutError):
            REQUESTS.labels("error").inc()
            raise
        REQUESTS.labels(f"{status // 100}xx").inc()
        if status >= 500 or status == 429:
            raise RetryableAnswer(f"{self.url} answered {status}")
        if status >= 300:
            log.error("%s refused the %s message of alert %s with %d: skipped", self.url, headers["X-Framewatch-Kind"],
                      headers["X-Framewatch-Alert-Id"], status)

    async def readiness(self) -> dict[str, bool]:
        return {"assigned": self.feed.joined}
