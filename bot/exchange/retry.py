"""Retries for reads, by the action the error policy gives each ccxt class
(``bot/exchange/policy.py``):

- retry: jittered exponential backoff (``OperationFailed`` and all its subclasses: timeouts,
  resets, 5xx with or without Binance's ``{"code","msg"}`` body, maintenance);
- retry after: wait what the venue asked (``Retry-After`` on 429 and on 418 bans), capped so
  that a reader is never parked for long; the next read asks again;
- resync: the venue refused our timestamp (-1021): measure its clock again (ccxt
  ``load_time_difference``, which ccxt then signs with) and retry at once;
- fail / fatal: raised at once. A failed read never ends a run by itself: callers carry on
  (the feed keeps trying and reports itself stale); only fatal errors end it.

Writes (``create_order``, ``cancel_order``) never come through here: an ambiguous write is
resolved by looking the order up by its client id (``bot/brokers/live.py``). ccxt's own rate
limiter stays on (``enableRateLimit``) underneath all of this.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from bot.errors import ExchangeError, ReadAction, VenueError
from bot.exchange.errors import call
from bot.logs import get_logger

T = TypeVar("T")
log = get_logger("exchange.retry")
MAX_WAIT_S = 60.0  # longest single wait on Retry-After; a longer ban is met by the next read


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 6
    base_s: float = 0.25
    cap_s: float = 10.0

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full-jitter exponential backoff for the ``attempt``-th retry (0-based)."""
        ceiling = min(self.cap_s, self.base_s * 2 ** attempt)
        return (rng or random).uniform(ceiling / 2, ceiling)


def retry_after_s(headers: Mapping[str, Any] | None) -> float | None:
    """The venue's Retry-After, in seconds, from a response's headers."""
    for key, value in dict(headers or {}).items():
        if str(key).lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                return None
    return None


async def resync_clock(exchange: Any) -> int | None:
    """Measure the venue's clock again; ccxt signs later requests with it. The new offset
    (local minus venue, ms), or None if the venue's time could not be read."""
    try:
        diff = await call(exchange.load_time_difference())
    except VenueError as exc:  # a failed measurement is not news; the next call will tell
        log.warning("clock_resync_failed", error=str(exc)[:200])
        return None
    log.info("clock_resynced", local_minus_venue_ms=diff)
    return int(diff)


async def read(exchange: Any, request: Callable[[], Awaitable[T]], what: str,
               policy: RetryPolicy = RetryPolicy()) -> T:
    """Run a read, retrying what the policy says is retryable; otherwise raise."""
    for attempt in range(policy.attempts):
        try:
            return await call(request())
        except ExchangeError as exc:
            action = exc.read  # (a FatalExchangeError is no ExchangeError: it goes straight up)
            last = attempt == policy.attempts - 1
            if action is ReadAction.FAIL or last:
                raise
            if action is ReadAction.RESYNC:
                await resync_clock(exchange)
                delay = 0.0
            elif action is ReadAction.RETRY_AFTER:
                asked = retry_after_s(exchange.last_response_headers)
                delay = policy.backoff(attempt) if asked is None else min(asked, MAX_WAIT_S)
            else:
                delay = policy.backoff(attempt)
            log.info("read_retry", what=what, attempt=attempt + 1, delay_s=round(delay, 2),
                     ccxt_class=exc.ccxt_class or type(exc).__name__, action=action.name,
                     error=str(exc)[:200])
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
