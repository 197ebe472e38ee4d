"""Trading states and the kill switch: one state machine that every channel converges on.

- ACTIVE: all orders allowed.
- REDUCING: only orders that reduce exposure (until a time, or until an operator resumes).
- HALTED: no new orders; cancels and closing orders still pass. HALTED latches: only an
  operator's resume leaves it, across restarts.

Kill levels: ``pause`` blocks new entries, ``cancel`` also cancels every open order,
``flatten`` also closes every position at market. Each puts the machine in HALTED.

Besides the state, entries can be blocked for a while without changing it: a cooldown after
consecutive losses, and stale data. Every change returns a ``Transition`` to be audited.
"""

from __future__ import annotations

from typing import Any

from bot.domain import KillLevel, RiskState, TradingState, Transition, evolve

_RANK = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}


class StateMachine:
    def __init__(self, state: RiskState | None = None) -> None:
        self.current = state or RiskState()

    @property
    def state(self) -> TradingState:
        return self.current.state

    # ---- what may pass ----------------------------------------------------------------
    def entries_allowed(self, now: int) -> bool:
        if self.current.state is not TradingState.ACTIVE or self.current.blocks:
            return False
        return self.current.cooldown_until is None or now >= self.current.cooldown_until

    def permits(self, reduces: bool, now: int) -> bool:
        """Orders that reduce exposure (and cancels) always pass; entries only when allowed."""
        return reduces or self.entries_allowed(now)

    def entry_block_reason(self, now: int) -> str:
        if self.current.state is not TradingState.ACTIVE:
            return f"{self.current.state.value}: {self.current.reason}"
        if self.current.blocks:
            return "entries blocked: " + ", ".join(sorted(self.current.blocks))
        return f"cooldown until {self.current.cooldown_until}"

    def restore(self, state: RiskState) -> None:
        """Take up a state the ledger kept (a restart)."""
        self.current = state

    # ---- events -----------------------------------------------------------------------
    def _move(self, after: TradingState, reason: str, source: str, ts: int,
              **changes: Any) -> Transition | None:
        before = self.current.state
        self.current = evolve(self.current, state=after, reason=reason,
                                           since_ts=ts, **changes)
        if before is after and source not in ("kill", "operator"):
            return None
        return Transition(before, after, reason, source, ts, changes.get("operator"),
                          changes.get("kill_level"))

    def trip(self, target: TradingState, reason: str, source: str, ts: int,
             until: int | None = None) -> Transition | None:
        """A breaker fired. Never lowers the state: REDUCING does not undo HALTED."""
        if _RANK[target] < _RANK[self.current.state]:
            return None
        if target is self.current.state:
            if target is TradingState.REDUCING and until is not None:
                current = self.current.reducing_until
                if current is not None and until > current:
                    self.current = evolve(self.current, reducing_until=until)
            return None
        return self._move(target, reason, source, ts,
                          reducing_until=until if target is TradingState.REDUCING else None)

    def kill(self, level: KillLevel, reason: str, operator: str, ts: int) -> Transition:
        t = self._move(TradingState.HALTED, f"kill {level.value}: {reason}", "kill", ts,
                       kill_level=level, operator=operator, reducing_until=None)
        assert t is not None
        return t

    def resume(self, reason: str, operator: str, ts: int) -> Transition:
        """Only an operator leaves HALTED or an open-ended REDUCING."""
        t = self._move(TradingState.ACTIVE, f"resumed: {reason}", "operator", ts,
                       kill_level=None, operator=operator, reducing_until=None,
                       cooldown_until=None)
        assert t is not None
        return t

    def tick(self, now: int) -> Transition | None:
        """Time passes: a REDUCING with an end expires; a cooldown ends."""
        if self.current.cooldown_until is not None and now >= self.current.cooldown_until:
            self.current = evolve(self.current, cooldown_until=None)
        until = self.current.reducing_until
        if self.current.state is TradingState.REDUCING and until is not None and now >= until:
            return self._move(TradingState.ACTIVE, "reducing period over", "clock", now,
                              reducing_until=None)
        return None

    def cooldown(self, until: int) -> None:
        current = self.current.cooldown_until or 0
        self.current = evolve(self.current, cooldown_until=max(current, until))

    def block(self, key: str, on: bool) -> bool:
        """Set or clear an entry block; True when it changed."""
        blocks = set(self.current.blocks)
        changed = (key in blocks) != on
        (blocks.add if on else blocks.discard)(key)
        self.current = evolve(self.current, blocks=frozenset(blocks))
        return changed


def operator_command(stored: dict[str, Any] | None, action: str, reason: str, operator: str,
                     level: str | None, ts: int) -> tuple[dict[str, Any], Transition]:
    """An operator's kill or resume applied to a stored state (its ``snapshot``; None: none
    stored yet): the new snapshot to latch, and the transition to audit. Pure: the caller
    reads and writes the state in one transaction (``bot/ledger/control_requests.py``)."""
    machine = StateMachine(RiskState.restore(stored) if stored else None)
    if action == "kill":
        tr = machine.kill(KillLevel(level or "pause"), reason, operator, ts)
    elif action == "resume":
        tr = machine.resume(reason, operator, ts)
    else:
        raise ValueError(f"unknown control action {action!r}")
    return machine.current.snapshot(), tr
