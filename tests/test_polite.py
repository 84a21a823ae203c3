"""The rate limiter, Retry-After parsing and backoff, with a fake clock (no sleeping in tests)."""
from __future__ import annotations

import random
import threading
import time
from email.utils import formatdate

from biomedclip_factory.pmc.polite import Backoff, RateLimiter, retry_after_seconds


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_limiter_spaces_requests_at_the_rate_after_the_burst():
    clock = FakeClock()
    limiter = RateLimiter(rate=10, burst=3, clock=clock, sleep=clock.sleep)
    stamps = []
    for _ in range(13):
        limiter.acquire()
        stamps.append(clock.now)
    assert stamps[:3] == [0.0, 0.0, 0.0]  # the burst
    assert [round(b - a, 6) for a, b in zip(stamps[2:], stamps[3:])] == [0.1] * 10
    clock.now += 5  # idle time refills only up to the burst
    for _ in range(4):
        limiter.acquire()
    assert round(clock.now, 6) == 6.1  # 1.0 + 5 idle, three from the refilled burst, the fourth waits


def test_limiter_is_exact_across_threads():
    limiter = RateLimiter(rate=200, burst=1)
    stamps: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            limiter.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps.sort()
    assert len(stamps) == 100 and stamps[-1] - stamps[0] >= 99 / 200 * 0.95  # never faster than the rate


def test_unlimited_limiter_never_waits():
    clock = FakeClock()
    limiter = RateLimiter(rate=0, clock=clock, sleep=clock.sleep)
    for _ in range(1000):
        limiter.acquire()
    assert clock.now == 0.0


def test_retry_after_as_seconds_or_http_date():
    assert retry_after_seconds("7") == 7.0
    now = time.time()
    assert 29 <= retry_after_seconds(formatdate(now + 30, usegmt=True), now=now) <= 31
    assert retry_after_seconds(formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_backoff_grows_with_jitter_and_obeys_retry_after_up_to_a_cap():
    backoff = Backoff(base=0.5, max_wait=10, rng=random.Random(0))
    waits = [backoff.wait(a) for a in range(6)]
    for attempt, wait in enumerate(waits):
        assert 0.5 * min(10, 0.5 * 2**attempt) <= wait <= min(10, 0.5 * 2**attempt)
    assert len({round(w / (0.5 * 2**a), 3) for a, w in enumerate(waits[:4])}) > 1  # jittered, not lockstep
    assert backoff.wait(0, retry_after=3) == 3 and backoff.wait(0, retry_after=3600) == 10
