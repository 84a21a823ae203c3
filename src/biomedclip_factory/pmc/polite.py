"""Being a good client of a shared server: a global request-rate limit and retries with backoff.

The limiter is a token bucket shared by every thread of the process: every HTTP attempt,
retries included, takes a token, so the configured rate is never exceeded however many workers
download at once. Retries wait ``base * 2**attempt`` scaled by a random factor in [0.5, 1] ("equal
jitter", so many clients that failed together do not retry together), or what the server's
``Retry-After`` asks when it says — capped, so one bad header cannot stall a run.
"""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime


class RateLimiter:
    """At most ``rate`` acquisitions per second on average, bursts up to ``burst``; 0 = unlimited."""

    def __init__(self, rate: float, burst: int = 1, clock=time.monotonic, sleep=time.sleep) -> None:
        self.rate, self.burst = rate, max(1, burst)
        self._clock, self._sleep = clock, sleep
        self._tokens = float(self.burst)
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if self.rate <= 0:
            return
        with self._lock:  # waiting inside the lock keeps the order fair and the rate exact
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens < 1:
                wait = (1 - self._tokens) / self.rate
                self._sleep(wait)
                self._last = self._clock()
                self._tokens = 0.0
            else:
                self._tokens -= 1


def retry_after_seconds(header: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), None if absent/bad."""
    if not header:
        return None
    header = header.strip()
    if header.isdigit():
        return float(header)
    try:
        when = parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


@dataclass
class Backoff:
    """Exponential backoff with equal jitter; a server's Retry-After wins, up to ``max_wait``."""

    base: float = 0.5
    max_wait: float = 60.0
    rng: random.Random = field(default_factory=random.Random)

    def wait(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_wait)
        return min(self.max_wait, self.base * 2**attempt) * self.rng.uniform(0.5, 1.0)
