"""The limits of admission control (see `exoquic.api.admission`).

Apart from the rest of it so that the command line can build them without
importing trio, which is slow to load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from exoquic import defaults


@dataclass(frozen=True)
class AdmissionLimits:
    """The `exoquic up` flags `--max-requests`, `--max-queued`, `--queue-timeout`.

    `max_requests` 0 means no limit (and no queue). A request beyond the limit
    waits up to `queue_timeout_s` for a slot if fewer than `max_queued` already
    wait; 0 seconds (the default) refuses at once.
    """

    max_requests: int = defaults.MAX_REQUESTS
    max_queued: int = defaults.MAX_QUEUED
    queue_timeout_s: float = defaults.QUEUE_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.max_requests < 0:
            raise ValueError(
                f"--max-requests must be 0 (no limit) or more, not {self.max_requests}"
            )
        if self.max_queued < 0:
            raise ValueError(f"--max-queued must be 0 or more, not {self.max_queued}")
        if not math.isfinite(self.queue_timeout_s) or self.queue_timeout_s < 0:
            raise ValueError(
                f"--queue-timeout must be 0 or more seconds, not {self.queue_timeout_s}"
            )
