"""Risk properties under random inputs (hypothesis), and the trading-state machine driven
through random event sequences (RuleBasedStateMachine)."""

from __future__ import annotations

from decimal import Decimal as D

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from bot.domain import Candle, Fill, MarketSpec, OrderIntent, Side
from bot.portfolio import Portfolio
from risk.manager import RiskManager
from risk.settings import RiskSettings
from risk.sizing import kelly
from risk.state import KillLevel, StateMachine, TradingState

SPEC = MarketSpec("BTC/USDT", "BTC", "USDT", amount_step=D("0.00001"), price_tick=D("0.01"),
                  min_notional=D("5"))
H = 3_600_000


def portfolio(cash: D, price: float, held: D = D(0)) -> Portfolio:
    p = Portfolio("a", cash, "USDT")
    p.mark(Candle("BTC/USDT", "1h", 0, price, price, price, price, 1))
    if held:
        p._cash += held * D(repr(price))
        p.apply_fill(Fill("f", "c", "a", "BTC/USDT", Side.BUY, held, D(repr(price)), D(0), "USDT", 0))
    return p


def manager(cfg: RiskSettings, atr: float, price: float) -> RiskManager:
    m = RiskManager(cfg, H)
    m.on_candle(Candle("BTC/USDT", "1h", 0, price, price, price, price, 1), atr)
    return m


cfgs = st.builds(
    RiskSettings,
    kelly_fraction=st.floats(0.05, 1.0), k_stop=st.floats(0.5, 5), k_target=st.floats(0.5, 8),
    max_risk_per_trade=st.floats(0.001, 0.2),
    max_order_notional=st.decimals(D("10"), D("1000000"), places=2),
    max_exposure_symbol=st.decimals(D("0.01"), D("1"), places=2),
    max_exposure_total=st.decimals(D("0.01"), D("1"), places=2),
)


@settings(max_examples=300, deadline=None)
@given(cfgs, st.decimals(D("100"), D("10000000"), places=2), st.floats(1, 100_000),
       st.floats(0.0001, 0.2), st.floats(0.0, 1.0), st.floats(0.0, 0.5))
def test_entry_size_never_exceeds_any_cap(cfg: RiskSettings, cash: D, price: float,
                                          atr_frac: float, p_up: float, dispersion: float) -> None:
    atr = price * atr_frac
    m = manager(cfg, atr, price)
    pf = portfolio(cash, price)
    intent = OrderIntent("BTC/USDT", Side.BUY, "t", 0, "v", confidence=p_up, dispersion=dispersion)
    d = m.review(intent, pf, SPEC)
    if not d.approved:
        assert d.quantity == 0 and d.reason
        return
    px = D(repr(price))
    notional = d.quantity * px
    equity = pf.equity()
    assert d.quantity == SPEC.floor_qty(d.quantity)
    assert notional <= cfg.max_order_notional
    assert notional <= equity * cfg.max_exposure_symbol
    assert notional <= equity * cfg.max_exposure_total
    risk_cap = float(equity) * cfg.max_risk_per_trade / (cfg.k_stop * atr)
    assert float(d.quantity) <= risk_cap * (1 + 1e-9)
    assert kelly(p_up, cfg.k_target / cfg.k_stop) > 0  # approved implies a positive edge


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(list(KillLevel)), st.booleans(), st.sampled_from([Side.BUY, Side.SELL]),
       st.decimals(D("0"), D("5"), places=3), st.floats(0.0, 1.0))
def test_halted_passes_only_reductions(level: KillLevel, reduce_only: bool, side: Side,
                                       held: D, p_up: float) -> None:
    m = manager(RiskSettings(), 50.0, 1000.0)
    m.kill(level, "test", "tester", 1)
    pf = portfolio(D("100000"), 1000.0, held)
    d = m.review(OrderIntent("BTC/USDT", side, "t", 0, "v", reduce_only=reduce_only,
                             confidence=p_up), pf, SPEC)
    reduces = side is Side.SELL and held > 0
    if d.approved:
        assert reduces
        assert d.quantity <= held


@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(0.05, 20))
def test_kelly_is_monotone_in_p(p1: float, p2: float, b: float) -> None:
    lo, hi = sorted((p1, p2))
    assert kelly(lo, b) <= kelly(hi, b)


@settings(max_examples=200, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.1, 5), st.floats(0.1, 8))
def test_no_trade_when_kelly_is_not_positive(p_up: float, k_stop: float, k_target: float) -> None:
    cfg = RiskSettings(k_stop=k_stop, k_target=k_target)
    assume(kelly(p_up, k_target / k_stop) <= 0)
    m = manager(cfg, 20.0, 1000.0)
    d = m.review(OrderIntent("BTC/USDT", Side.BUY, "t", 0, "v", confidence=p_up),
                 portfolio(D("100000"), 1000.0), SPEC)
    assert not d.approved and d.quantity == 0


class TradingStates(RuleBasedStateMachine):
    """Random trips, kills, resumes and clock ticks never break the state machine's rules."""

    def __init__(self) -> None:
        super().__init__()
        self.m = StateMachine()
        self.now = 0
        self.halted_by_operator_only = True

    @rule(state=st.sampled_from(list(TradingState)), until=st.one_of(st.none(), st.integers(0, 500)))
    def trip(self, state: TradingState, until: int | None) -> None:
        before = self.m.state
        self.m.trip(state, "breaker", "test", self.now, None if until is None else self.now + until)
        rank = [TradingState.ACTIVE, TradingState.REDUCING, TradingState.HALTED]
        assert rank.index(self.m.state) >= rank.index(before)  # a trip never lowers the state

    @rule(level=st.sampled_from(list(KillLevel)))
    def kill(self, level: KillLevel) -> None:
        t = self.m.kill(level, "r", "op", self.now)
        assert self.m.state is TradingState.HALTED and t.kill_level is level

    @rule()
    def resume(self) -> None:
        self.m.resume("r", "op", self.now)
        assert self.m.state is TradingState.ACTIVE

    @rule(dt=st.integers(0, 300))
    def tick(self, dt: int) -> None:
        before = self.m.state
        until = self.m.s.reducing_until
        self.now += dt
        self.m.tick(self.now)
        if before is TradingState.HALTED:
            assert self.m.state is TradingState.HALTED  # only an operator leaves HALTED
        if self.m.state is TradingState.ACTIVE and before is TradingState.REDUCING:
            assert until is not None and self.now >= until

    @rule(key=st.sampled_from(["stale:A", "stale:B"]), on=st.booleans())
    def block(self, key: str, on: bool) -> None:
        self.m.block(key, on)

    @rule(until=st.integers(0, 100))
    def cooldown(self, until: int) -> None:
        self.m.cooldown(self.now + until)

    @invariant()
    def entries_only_when_active_and_unblocked(self) -> None:
        if self.m.entries_allowed(self.now):
            assert self.m.state is TradingState.ACTIVE and not self.m.s.blocks
        assert self.m.permits(True, self.now)  # reductions always pass

    @invariant()
    def halted_blocks_entries(self) -> None:
        if self.m.state is TradingState.HALTED:
            assert not self.m.permits(False, self.now)

    @invariant()
    def snapshot_round_trips(self) -> None:
        from risk.state import RiskState

        assert RiskState.restore(self.m.s.snapshot()) == self.m.s


TestTradingStates = TradingStates.TestCase
TestTradingStates.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
