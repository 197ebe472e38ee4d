"""The composition root: which adapters each mode plugs into the one engine.

- backtest: replay feed + simulated clock + paper broker (static markets) + pipelined ledger;
            the ensemble's member outputs computed ahead over the known series
- paper:    live ccxt feed + wall clock + paper broker (the exchange's markets) + ledger
- live:     live ccxt feed + wall clock + ccxt broker + ledger

This is the only place that looks at the mode.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from bot.brokers.paper import PaperBroker, static_markets
from bot.clock import SimulatedClock, WallClock
from bot.config import Settings, require_live_ready
from bot.domain import CandleSeries, Mode, timeframe_ms
from bot.engine import Engine, EngineParts
from bot.errors import ConfigError, FatalExchangeError, StackbotError
from bot.feeds.replay import ReplayFeed
from bot.feeds.series import load_series
from bot.ledger.embedded import embedded_url
from bot.ledger.logins import Logins, database_logins, prepare
from bot.ledger.pipeline import PipelinedLedger
from bot.ledger.repository import PostgresLedger, make_engine
from bot.logs import get_logger
from bot.metrics import RunStats
from bot.portfolio import Portfolio
from bot.ports import Broker, Feed, Ledger
from bot.records import fatal_payload
from risk.manager import RiskManager
from strategies.baseline import EmaCrossSignal, TrendFollowStrategy

if TYPE_CHECKING:
    from models.ahead_worker import AheadWorker

log = get_logger("app")


def database_logins_of(settings: Settings) -> Logins:
    """Who migrates and who the service logs in as (``bot/ledger/logins.py``)."""
    db = settings.database
    url = db.url.get_secret_value() if db.url is not None else embedded_url(settings.home)
    migrate = db.migrate_url.get_secret_value() if db.migrate_url is not None else None
    return database_logins(url, migrate, db.app_role)


def database_url(settings: Settings) -> str:
    """The URL the service connects with: its own login, never the owner's."""
    return database_logins_of(settings).service


async def open_postgres(settings: Settings, synchronous_commit: bool = True) -> PostgresLedger:
    """Migrate as the owner (where this process has the owner's URL), then connect as the
    service's login."""
    logins = database_logins_of(settings)
    await prepare(logins)
    return PostgresLedger(make_engine(logins.service), synchronous_commit)


def new_run_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Outcome:
    run_id: str
    account: str
    status: str
    summary: dict[str, Any]
    equity: list[tuple[int, float]] | None = None  # (close time, equity) per step


_FROZEN = False


def settle_heap() -> None:
    """What the process has built so far (modules, settings, markets, history, a backtest's
    candles) leaves the cyclic collector's sight (``gc.freeze``), and its youngest generation
    is collected every 50,000 allocations instead of 700. A candle step allocates hundreds of
    short-lived objects that reference counting frees at once; frequent collector passes over
    them cost several per cent of a backtest, and passes over a heap of candles being loaded
    cost more (bench/RESULTS.md). The heap is collected once, the first time, while it is
    still small: a backtest calls this before it loads its files and again before its loop.
    Cyclic garbage made later is still collected, less often."""
    global _FROZEN
    if not _FROZEN:
        gc.collect()
        _FROZEN = True
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def drive(
    settings: Settings, run_id: str, account: str, mode: Mode, exchange_name: str,
    symbols: Sequence[str], feed: Feed, broker: Broker, ledger: Ledger, clock: Any,
    engine_hook: Any = None, venue_stops: bool = True, stack: tuple[Any, Any] | None = None,
    series: Sequence[CandleSeries] | None = None, ahead: AheadWorker | None = None,
    firsts: Mapping[str, int | None] | None = None,
) -> Outcome:
    """Start a run, restore the account, stream until the feed ends or a stop, finish it."""
    started = time.perf_counter()
    structlog.contextvars.bind_contextvars(run_id=run_id, account=account, mode=mode.value)
    cfg = settings
    try:
        markets = await broker.markets(symbols)
    except FatalExchangeError as exc:  # e.g. a configured symbol the venue does not list
        await _fail_before_start(settings, run_id, account, mode, exchange_name, symbols,
                                 ledger, clock.now_ms(), exc)
        await feed.close()
        await broker.close()
        await ledger.close()
        raise
    stats = RunStats(cfg.timeframe, cfg.paper.starting_balance)
    portfolio = Portfolio(account, cfg.paper.starting_balance, cfg.quote_currency,
                          margined=[s for s, m in markets.items() if m.margined])
    cost = cfg.paper.round_trip_cost(markets.values())
    risk = RiskManager(cfg.risk, timeframe_ms(cfg.timeframe), round_trip_cost=cost,
                       venue_stops=venue_stops, margin=cfg.futures.terms())
    shorts = any(m.margined for m in markets.values())
    source, strategy = stack or await signal_stack(settings, ledger, cost, series, shorts, ahead,
                                                   firsts)
    parts = EngineParts(feed, source, strategy, risk, broker, ledger, clock)
    await ledger.start_run(run_id, account, mode.value, exchange_name, symbols, cfg.timeframe,
                           source.model_version, settings.redacted(),
                           cfg.paper.starting_balance, quote=cfg.quote_currency)
    engine = Engine(run_id, account, parts, portfolio, markets, stats, cfg.max_candles)
    engine.reconcile_every = cfg.exchange.reconcile_every
    if engine_hook is not None:
        engine_hook(engine)
    status = "failed"
    fatal: FatalExchangeError | None = None
    try:
        await engine.restore()
        stats.starting_equity = portfolio.equity()
        settle_heap()
        await engine.run()
        status = "stopped" if engine.stopped.is_set() else "completed"
    except FatalExchangeError as exc:
        fatal = exc
        await engine.record_fatal(exc)
        raise
    finally:
        summary = stats.summary(portfolio.equity(), portfolio.cash,
                                time.perf_counter() - started)
        summary.update(run_id=run_id, account=account, mode=mode.value, status=status,
                       symbols=list(symbols), timeframe=cfg.timeframe,
                       trading_state=risk.machine.state.value,
                       breakers_fired=dict(risk.report.trips),
                       state_changes=list(risk.report.transitions),
                       risk_decisions=dict(risk.report.decisions),
                       liquidation_guard_rejections=risk.report.guard_rejections,
                       retrain_requests=risk.report.retrain_requests)
        if fatal is not None:
            summary.update(error=fatal_payload(fatal))
        try:
            await ledger.finish_run(run_id, status, summary)
            await _anchor(ledger, settings)
        finally:
            await feed.close()
            await broker.close()
            await ledger.close()
    return Outcome(run_id, account, status, summary, stats.equity_curve())


async def _fail_before_start(settings: Settings, run_id: str, account: str, mode: Mode,
                             exchange_name: str, symbols: Sequence[str], ledger: Ledger,
                             now: int, exc: FatalExchangeError) -> None:
    """The venue refused the run before it began: record the run as failed, with why."""
    from bot.domain import AuditEvent, UnitOfWork

    cfg = settings
    await ledger.start_run(run_id, account, mode.value, exchange_name, symbols, cfg.timeframe,
                           cfg.strategy.name, settings.redacted(), cfg.paper.starting_balance,
                           quote=cfg.quote_currency)
    unit = UnitOfWork()
    unit.audit.append(AuditEvent("run.fatal", "account", account, account, run_id, now,
                                 fatal_payload(exc)))
    await ledger.commit(unit)
    await ledger.flush()
    await ledger.finish_run(run_id, "failed", {"status": "failed", "error": fatal_payload(exc)})


def anchors_path(settings: Settings) -> Path:
    return settings.home / "audit-anchors.jsonl"


async def _anchor(ledger: Ledger, settings: Settings) -> Any:
    """Anchor the audit chain outside the database (at the end of a run, and on a timer). A
    failure is logged and changes nothing else: the next anchor covers this one."""
    from bot.ledger.audit import anchor_chain

    try:
        return await anchor_chain(ledger, anchors_path(settings))
    except (StackbotError, OSError) as exc:
        log.error("audit_anchor_failed", error=str(exc))
        return None


async def signal_stack(settings: Settings, ledger: Any, cost: float,
                       series: Sequence[CandleSeries] | None = None,
                       margined: bool = False,
                       ahead: AheadWorker | None = None,
                       firsts: Mapping[str, int | None] | None = None) -> tuple[Any, Any]:
    """The signal source and strategy: the EMA baseline, or the active model ensemble. A
    backtest hands over its ``series``: the ensemble's member outputs are then computed
    ahead in large batches (``models/ensemble_batch.py``), with the same decisions, on the
    CPU in the look-ahead processes ``ahead`` where the backtest started them; ``firsts``:
    where in each series the run starts (``ReplayFeed.first_index``).
    ``margined``: the markets are perpetuals, where either strategy may also go short."""
    cfg = settings.strategy
    if cfg.name == "baseline":
        return (EmaCrossSignal(cfg.fast, cfg.slow),
                TrendFollowStrategy(shorts=margined and cfg.shorts))
    from models.device import cuda_possible, in_torch_thread, pick_device
    from models.ensemble import Ensemble
    from models.ensemble_source import EnsembleSignalSource
    from models.labels import barrier_from
    from strategies.ensemble import EnsembleStrategy

    active = await ledger.active_ensemble()
    if active is None:
        raise ConfigError("strategy 'ensemble' needs an active ensemble: run `stackbot train` "
                          "(it promotes the first one) or `stackbot models promote ID`")
    barrier, manifest = barrier_from(settings.risk), Path(active.path)
    # a CPU backtest: the look-ahead processes load it, this process combines without torch
    loop = asyncio.get_running_loop()
    beside = ahead is not None and series is not None and not cuda_possible(cfg.device)
    if beside and ahead is not None and series is not None:
        from models.series_ahead import early_look_ahead

        early = await loop.run_in_executor(None, early_look_ahead, ahead, manifest,
                                           active.sha256, barrier, series, firsts,
                                           timeframe_ms(settings.timeframe))
    else:
        early = None
    ens = (await loop.run_in_executor(None, ahead.ensemble, manifest, active.sha256, barrier)
           if beside and ahead is not None else None)
    if ens is None:  # or they failed (loading here raises why), are late, or CUDA is here:
        # loaded on the thread that will score with it (models/device.py says why)
        device = pick_device(cfg.device)
        if ahead is not None and (series is None or device != "cpu"):
            ahead.close()  # a GPU computes the look-ahead in this process, in seconds
            ahead = None
        if ahead is not None:  # it loads the same checked files beside this process
            ahead.load(manifest, active.sha256, barrier.to_dict())
        ens = await in_torch_thread(Ensemble.load, manifest, active.sha256, barrier,
                                    device, cfg.compile, cfg.cuda_graphs)
    if series is not None:
        from models.ensemble_batch import BatchedEnsembleSignalSource

        source: EnsembleSignalSource = BatchedEnsembleSignalSource(
            ens, settings.timeframe, series, worker=ahead, early=early)
    else:
        source = EnsembleSignalSource(ens, settings.timeframe)
    return source, EnsembleStrategy(
        barrier.k_stop, barrier.k_target, barrier.horizon, timeframe_ms(settings.timeframe),
        cost=cost, max_dispersion=cfg.max_dispersion, shorts=margined and cfg.shorts)


async def backtest(settings: Settings, files: Sequence[Path] | Sequence[CandleSeries],
                   symbols: Sequence[str] | None, start_ms: int | None, end_ms: int | None,
                   engine_hook: Any = None, stack: tuple[Any, Any] | None = None,
                   marks: Sequence[Path] | None = None,
                   funding: Sequence[Path] | None = None) -> Outcome:
    """``files`` may also be already loaded series (evaluation reuses them)."""
    early = sys.modules.get("models.ahead_worker")  # imported where the command line started
    ahead = early.take_early() if early is not None else None  # them (a baseline: no numpy)
    if stack is None and settings.strategy.name == "ensemble" and look_ahead_process(settings):
        from models.ahead_worker import AheadWorker, processes  # numpy only: no torch

        ahead = ahead or AheadWorker(processes())  # its torch import overlaps this start
    elif ahead is not None:
        ahead.close()
        ahead = None
    try:
        return await _backtest(settings, files, symbols, start_ms, end_ms, engine_hook, stack,
                               marks, funding, ahead)
    finally:
        if ahead is not None:
            ahead.close()


def look_ahead_process(settings: Settings) -> bool:
    """Whether an ensemble backtest computes its look-ahead in processes of its own: on the
    CPU (a GPU does it in seconds here) and with a second core to run them on."""
    return settings.strategy.device in ("auto", "cpu") and (os.cpu_count() or 1) >= 2


async def _backtest(settings: Settings, files: Sequence[Path] | Sequence[CandleSeries],
                    symbols: Sequence[str] | None, start_ms: int | None, end_ms: int | None,
                    engine_hook: Any, stack: tuple[Any, Any] | None,
                    marks: Sequence[Path] | None, funding: Sequence[Path] | None,
                    ahead: AheadWorker | None) -> Outcome:
    settle_heap()  # before the candles: the collector need not walk them as they load
    series = ([f for f in files if isinstance(f, CandleSeries)]
              if files and isinstance(files[0], CandleSeries)
              else load_series([Path(f) for f in files if not isinstance(f, CandleSeries)],
                               settings.timeframe, symbols, marks, funding))
    clock = SimulatedClock()
    feed = ReplayFeed(series, start_ms, end_ms)
    cfg = settings.paper
    broker = PaperBroker(static_markets(), clock, cfg.quote, cfg.starting_balance,
                         cfg.slippage_bps, cfg.participation, cfg.fee_rate,
                         settings.futures.terms())
    ledger = PipelinedLedger(await open_postgres(settings, synchronous_commit=False),
                             settings.database.batch_candles)
    run_id = new_run_id()
    return await drive(settings, run_id, f"backtest:{run_id}", Mode.BACKTEST, "replay",
                       feed.symbols, feed, broker, ledger, clock, engine_hook, stack=stack,
                       series=series, ahead=ahead,
                       firsts={s.symbol: feed.first_index(s) for s in series})


async def trade(settings: Settings, engine_hook: Any = None) -> Outcome:
    """Paper or live trading on the exchange's live data."""
    from bot.exchange.client import make_exchange
    from bot.exchange.markets import ccxt_markets
    from bot.feeds.live import LiveFeed

    mode = settings.mode
    if mode is Mode.BACKTEST:
        raise ConfigError("use `stackbot backtest` for backtests")
    if mode is Mode.LIVE:
        require_live_ready(settings)
    exchange = make_exchange(settings.exchange, with_ws=settings.exchange.feed != "rest",
                             swaps=settings.perpetuals)
    clock = WallClock()
    from bot.exchange.retry import resync_clock

    await resync_clock(exchange)  # sign on the venue's clock from the first request
    # history at start: the ensemble needs its feature warm-up (about 350 candles) plus the
    # 400 it replays to rebuild its online weights (models/ensemble_source.py); the EMA 200
    warmup = 200
    if settings.strategy.name == "ensemble":
        from models.ensemble_source import LIVE_WARMUP

        warmup = LIVE_WARMUP
    feed = LiveFeed(exchange, settings.symbols, settings.timeframe, settings.exchange, clock,
                    warmup=warmup)
    broker: Broker
    if mode is Mode.LIVE:
        from bot.brokers.live import LiveBroker

        broker = LiveBroker(exchange, clock, settings.quote_currency,
                            settings.exchange.recv_window_ms, margin=settings.futures.terms())
    else:
        cfg = settings.paper
        broker = PaperBroker(ccxt_markets(exchange), clock, cfg.quote, cfg.starting_balance,
                             cfg.slippage_bps, cfg.participation, cfg.fee_rate,
                             settings.futures.terms())
    ledger = await open_postgres(settings)
    account = account_name(settings)
    services = Services(settings, database_url(settings), account)
    from bot.exchange.deadman import DeadMansSwitch

    dead_man = DeadMansSwitch(exchange, settings.exchange.dead_man_s if mode is Mode.LIVE else 0)
    dead_man.start()
    try:
        return await drive(settings, new_run_id(), account, mode, settings.exchange.name,
                           settings.symbols, feed, broker, ledger, clock,
                           services.hook(engine_hook),
                           venue_stops=mode is Mode.PAPER or exchange_has_stops(exchange))
    finally:
        await dead_man.close()
        await services.close()
        await exchange.close()


def account_name(settings: Settings) -> str:
    """The account a paper or live instance trades and resumes: instance, mode, exchange."""
    return f"{settings.instance}:{settings.mode.value}:{settings.exchange.name}"


def exchange_has_stops(exchange: Any) -> bool:
    has = exchange.has  # ccxt declares what each exchange can do in ``has``
    return bool(has.get("createStopOrder") or has.get("createStopMarketOrder")
                or has.get("createStopLossOrder"))


class Services:
    """What runs beside a paper or live engine: the database kill-switch listener, the MQTT
    bus with signed commands, and the scheduled jobs."""

    def __init__(self, settings: Settings, db_url: str, account: str) -> None:
        self.settings, self.db_url, self.account = settings, db_url, account
        self.listener: Any = None
        self.bus: Any = None
        self.scheduler: Any = None
        self.metrics: Any = None

    def hook(self, outer: Any) -> Any:
        def attach(engine: Engine) -> None:
            self.engine = engine
            if outer is not None:
                outer(engine)
            engine.on_started = self.start

        return attach

    async def start(self, engine: Engine, nonces: set[str], acks: dict[str, Any]) -> None:
        from bot.command_gate import CommandGate
        from bot.jobs import build_scheduler, heartbeat_job
        from bot.ledger.control_requests import ControlListener

        cfg = self.settings
        self.listener = ControlListener(
            self.db_url, lambda _: asyncio.ensure_future(engine.operator.poll()))
        self.listener.start(self.account)
        if cfg.metrics.enabled:
            self.metrics = self.start_metrics(engine)
        beat = None
        if cfg.mqtt.enabled:
            from bot.bus.mqtt import MqttBus
            from bot.bus.telemetry import publish_unit

            secret = cfg.mqtt.command_secret.get_secret_value() if cfg.mqtt.command_secret else None
            gate = CommandGate(engine, secret, nonces, acks, cfg.mqtt.max_skew_s * 1000,
                               instance=cfg.instance, account=self.account)
            self.bus = MqttBus(cfg.mqtt.host, cfg.mqtt.port, cfg.instance, gate.handle,
                               cfg.mqtt.username,
                               cfg.mqtt.password.get_secret_value() if cfg.mqtt.password else None)
            engine.telemetry = lambda unit: publish_unit(self.bus, unit)
            self.bus.set_status({"account": self.account, "mode": cfg.mode.value,
                                 "state": "online",
                                 "trading_state": engine.risk.machine.state.value})
            self.bus.start()
            beat = heartbeat_job(engine, self.bus)
        from bot.jobs import retrain_job

        self.scheduler = build_scheduler(engine, cfg.jobs, beat, cfg.mqtt.heartbeat_s,
                                         retrain_job(engine, cfg, self.db_url),
                                         anchor=self.anchor_job(engine))
        self.scheduler.start()

    def start_metrics(self, engine: Engine) -> Any:
        """``/metrics`` for Prometheus on its own port; the engine reports to it."""
        from bot.bus.prometheus import PrometheusObserver

        cfg, source = self.settings, engine.parts.source
        observer = PrometheusObserver(self.account, source.device, source.model_version)
        observer.set_feed_mode("rest" if cfg.exchange.feed == "rest" else "ws")
        observer.on_risk(engine.risk.machine.state.value, engine.risk.readings)
        observer.serve(cfg.metrics.host, cfg.metrics.port)
        engine.observer = observer
        log.info("metrics_serving", host=cfg.metrics.host, port=cfg.metrics.port)
        return observer

    def anchor_job(self, engine: Engine) -> Any:
        """Every ``jobs.anchor_minutes``: the audit chain head to the anchors file, the log and
        the retained MQTT topic ``audit/anchor``."""

        async def job() -> None:
            a = await _anchor(engine.parts.ledger, self.settings)
            if a is not None and self.bus is not None:
                self.bus.publish("audit/anchor", {"seq": a.seq, "hash": a.hash,
                                                  "at_ms": a.at_ms}, retain=True)

        return job

    async def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        if self.bus is not None:
            await self.bus.close()
        if self.listener is not None:
            await self.listener.close()
        if self.metrics is not None:
            self.metrics.close()
