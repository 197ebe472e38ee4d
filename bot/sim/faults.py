"""Fault injection for the exchange simulator: what breaks, where, and how often.

A ``FaultPlan`` holds rules. Each rule names a fault kind, where it applies (path globs and
HTTP methods; websocket faults apply to kline pushes) and when it fires:

- ``rate``: the chance per request (or per kline push, or per order);
- ``every``: every Nth matching request (a schedule);
- ``window``: every matching request between two wall-clock offsets from the plan's start.

The kinds, by layer:

- HTTP (``HTTP_KINDS``), each with the status, headers and ``{"code","msg"}`` body Binance
  documents (https://developers.binance.com/docs/binance-spot-api-docs/errors and
  .../rest-api/http-return-codes): ``rate_limit`` (429, -1003, Retry-After), ``ban`` (418,
  -1003, Retry-After), ``unknown_error`` (500, -1000), ``disconnected`` (503, -1001),
  ``send_unknown`` (503, -1007 "Send status unknown; execution status unknown"), and
  ``server_error`` (a bare 502/503/504 from a proxy, no Binance body). On an order, -1000,
  -1007 and the bare 5xx are carried out half of the time (5XX: "execution status is
  UNKNOWN and could have been a success"); -1001 never. ``clock_skew`` moves the venue's
  clock by ``skew_step_ms`` (forward, then back), so signed requests meet Binance's timing
  rule and get -1021 until the client resyncs. ``slow`` (answers late but in time),
  ``timeout`` (held past the client's timeout, then carried out: past the recvWindow the
  venue refuses it, as the real one does), ``reset`` (the connection is cut before anything
  happens) and ``lost`` (the request is carried out and then the connection is cut);
- orders (``ORDER_KINDS``): ``partial_fill`` (a market order fills part and expires),
  ``insufficient_funds`` (-2010 "Account has insufficient balance"), ``reject`` (-1013 filter
  failure), ``cancel_race`` (the order fills just before the cancel arrives: -2011 "Unknown
  order sent.");
- websocket (``WS_KINDS``): ``duplicate``, ``late`` and ``out_of_order`` klines, ``ws_drop``.

Spec strings (``--fault`` on ``stackbot sim-exchange``)::

    KIND=RATE[@PATH][:METHOD]        rate_limit=0.05@/api/v3/klines
    KIND=every:N[@PATH][:METHOD]     lost=every:7@/api/v3/order:POST
    KIND=window:T0-T1[@PATH]         server_error=window:30-60
"""

from __future__ import annotations

import fnmatch
import random
import time
from collections import Counter
from dataclasses import dataclass, field

HTTP_KINDS = ("rate_limit", "ban", "unknown_error", "disconnected", "send_unknown",
              "server_error", "clock_skew", "slow", "timeout", "reset", "lost")
ORDER_KINDS = ("partial_fill", "insufficient_funds", "reject", "cancel_race")
WS_KINDS = ("duplicate", "late", "out_of_order", "ws_drop")
KINDS = HTTP_KINDS + ORDER_KINDS + WS_KINDS


class FaultSpecError(ValueError):
    """A fault spec string that cannot be read; the message says which part."""


@dataclass
class FaultRule:
    kind: str
    rate: float = 0.0
    every: int = 0
    window: tuple[float, float] | None = None
    path: str = "*"
    method: str = "*"
    seen: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FaultSpecError(f"unknown fault kind {self.kind!r}; known: {', '.join(KINDS)}")
        if not 0 <= self.rate <= 1:
            raise FaultSpecError(f"fault {self.kind}: rate {self.rate} is not within 0..1")

    def applies(self, method: str, path: str) -> bool:
        return (self.method in ("*", method.upper())) and fnmatch.fnmatchcase(path, self.path)

    def fires(self, rng: random.Random, elapsed_s: float) -> bool:
        self.seen += 1
        if self.every:
            return self.seen % self.every == 0
        if self.window is not None:
            return self.window[0] <= elapsed_s < self.window[1]
        return rng.random() < self.rate

    @classmethod
    def parse(cls, spec: str) -> FaultRule:
        kind, sep, rest = spec.strip().partition("=")
        if not sep:
            raise FaultSpecError(f"fault {spec!r}: expected KIND=RATE[@PATH][:METHOD]")
        when, _, where = rest.partition("@")
        path, method = "*", "*"
        if where:
            path, _, m = where.partition(":")
            method = m.upper() or "*"
        rule = cls(kind.strip(), path=path or "*", method=method)
        try:
            if when.startswith("every:"):
                rule.every = int(when[6:])
                if rule.every < 1:
                    raise ValueError
            elif when.startswith("window:"):
                a, _, b = when[7:].partition("-")
                rule.window = (float(a), float(b))
            else:
                rule.rate = float(when)
        except ValueError:
            raise FaultSpecError(f"fault {spec!r}: cannot read {when!r} as a rate, every:N "
                                 "or window:T0-T1") from None
        rule.__post_init__()
        return rule


@dataclass
class FaultPlan:
    rules: list[FaultRule] = field(default_factory=list)
    seed: int = 0
    slow_s: float = 0.3  # "slow": late but inside the client's timeout
    hold_s: float = 2.0  # "timeout": longer than the client waits
    retry_after_s: int = 1
    skew_step_ms: int = 7_000  # a clock_skew moves the venue's clock this far (then back)
    counts: Counter[str] = field(default_factory=Counter)
    enabled: bool = True

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._t0 = time.monotonic()

    @classmethod
    def from_specs(cls, specs: list[str] | tuple[str, ...], seed: int = 0,
                   **kw: float) -> FaultPlan:
        return cls([FaultRule.parse(s) for s in specs], seed, **kw)  # type: ignore[arg-type]

    def _pick(self, kinds: tuple[str, ...], method: str, path: str) -> str | None:
        if not self.enabled:
            return None
        elapsed = time.monotonic() - self._t0
        for rule in self.rules:
            if rule.kind in kinds and rule.applies(method, path) and rule.fires(self._rng, elapsed):
                return rule.kind
        return None

    def http(self, method: str, path: str) -> str | None:
        return self._pick(HTTP_KINDS, method, path)

    def order(self, order_type: str) -> str | None:
        kind = self._pick(("partial_fill", "insufficient_funds", "reject"), "POST", "/api/v3/order")
        if kind == "partial_fill" and order_type != "MARKET":
            return None
        return kind

    def cancel(self) -> str | None:
        return self._pick(("cancel_race",), "DELETE", "/api/v3/order")

    def coin(self) -> bool:
        """Did an order whose answer is an unknown-status error get carried out?"""
        return self._rng.random() < 0.5

    def ws(self) -> str | None:
        return self._pick(WS_KINDS, "WS", "/ws")

    def fraction(self) -> float:
        return self._rng.uniform(0.2, 0.8)

    def record(self, kind: str) -> None:
        self.counts[kind] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())
