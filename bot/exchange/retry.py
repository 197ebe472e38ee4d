"""Retry policy by error class, for reads only.

- ``RateLimited`` (429/418): wait what the venue asked (``Retry-After``) or back off, then retry;
- ``RequestTimedOut`` / ``ExchangeUnavailable`` (timeouts, resets, 5xx): jittered exponential
  backoff, then retry;
- anything else (rejections, auth, unknown symbol, order not found) is final: raised at once.

Writes (``create_order``, ``cancel_order``) never come through here: an ambiguous write is
resolved by looking the order up by its client id (``bot/brokers/live.py``). ccxt's own rate
limiter stays on (``enableRateLimit``) underneath all of this.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from bot.errors import ExchangeUnavailable, RateLimited
from bot.exchange.errors import call
from bot.logs import get_logger

T = TypeVar("T")
log = get_logger("exchange.retry")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 6
    base_s: float = 0.25
    cap_s: float = 10.0

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full-jitter exponential backoff for the ``attempt``-th retry (0-based)."""
        ceiling = min(self.cap_s, self.base_s * 2 ** attempt)
        return (rng or random).uniform(ceiling / 2, ceiling)


def retry_after_s(exchange: Any) -> float | None:
    """The venue's Retry-After, in seconds, from the last response's headers."""
    headers = getattr(exchange, "last_response_headers", None) or {}
    for key, value in dict(headers).items():
        if str(key).lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                return None
    return None


async def read(exchange: Any, request: Callable[[], Awaitable[T]], what: str,
               policy: RetryPolicy = RetryPolicy()) -> T:
    """Run a read, retrying what is retryable; the last error is raised when out of tries."""
    for attempt in range(policy.attempts):
        try:
            return await call(request())
        except RateLimited as exc:
            if attempt == policy.attempts - 1:
                raise
            delay = retry_after_s(exchange)
            delay = policy.backoff(attempt) if delay is None else min(delay, policy.cap_s * 6)
            log.warning("rate_limited", what=what, attempt=attempt + 1, delay_s=round(delay, 2),
                        error=str(exc)[:200])
        except ExchangeUnavailable as exc:
            if attempt == policy.attempts - 1:
                raise
            delay = policy.backoff(attempt)
            log.info("read_retry", what=what, attempt=attempt + 1, delay_s=round(delay, 2),
                     kind=type(exc).__name__)
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
