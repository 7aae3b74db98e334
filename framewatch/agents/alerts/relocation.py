"""Relocation: an alert's image is copied from frames/ to its alert key before the alert goes out.

Copying first, in the rules agent, means no alert ever exists without its image: the frame object is deleted
afterwards by retention, like every other frame, once the frame's outcome says the copy is done. A frame whose
image could not be copied after the retries keeps its object (outcome `alert`, reason `image_not_copied`), which
becomes the alert's image: the alert goes out (and its row is stored) with the frame's key as `image_key`, so it
is deleted with the alert row at its maximum age, and the sweep keeps it meanwhile. The alert is also sent to
fw.dead-letters with the reason.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter

from framewatch.clients.objectstore import ObjectStore, StoreError
from framewatch.metrics import Tally
from framewatch.retry import Backoff, logged
from framewatch.schemas.events import AlertEvent

log = logging.getLogger("framewatch.relocation")

COPIED = Tally("framewatch_relocation_copied_total", "Alert images copied to their alert key")
RETRIES = Counter("framewatch_relocation_retries_total", "Copy attempts that failed and were retried")
DEAD = Tally("framewatch_relocation_dead_letters_total", "Alert images that could not be copied")

IMAGE_NOT_COPIED = "image_not_copied"


class Relocator:
    def __init__(self, store: ObjectStore, retries: int = 3, first_backoff_s: float = 0.5) -> None:
        self.store = store
        self.backoff = Backoff(first_s=first_backoff_s, max_s=8 * first_backoff_s, attempts=retries + 1)

    async def copy_image(self, alert: AlertEvent) -> str | None:
        """Copy the frame's image to the alert key; None on success, else why it could not be copied."""
        try:
            await self.backoff.call(self.store.copy, lambda error: isinstance(error, StoreError),
                                    logged(log, f"copying the image of alert {alert.alert_id}", RETRIES.inc),
                                    alert.frame.object_key, alert.image_key)
        except StoreError as error:
            DEAD.inc()
            log.error("alert %s: image not copied after %d attempts: %s", alert.alert_id, self.backoff.attempts,
                      error)
            return str(error)
        COPIED.inc()
        return None
