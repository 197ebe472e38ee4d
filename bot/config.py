"""One typed, frozen settings object.

Precedence, lowest to highest: defaults, a TOML file (``--config`` or ``STACKBOT_CONFIG``),
``STACKBOT_*`` environment variables, CLI flags. Unknown keys anywhere fail at start-up with a
message naming the key. Secrets are ``SecretStr`` and never printed.

Environment names follow the section: ``STACKBOT_EXCHANGE_API_KEY`` sets ``exchange.api_key``,
``STACKBOT_DATABASE_URL`` sets ``database.url``, ``STACKBOT_MODE`` sets ``mode``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from bot.domain import TIMEFRAME_MS, MarginMode, MarketSpec, Mode
from bot.errors import ConfigError
from bot.logs import register_settings_secrets
from risk.margin import MarginTerms
from risk.settings import RiskSettings

ENV_PREFIX = "STACKBOT_"
META_ENV = {"STACKBOT_CONFIG"}  # read by the loader itself, not a settings key


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ExchangeSettings(_Section):
    name: str = "binance"
    url: str | None = Field(None, description="REST base URL override (testnet, simulator)")
    ws_url: str | None = Field(None, description="websocket base URL; derived from url if unset")
    sandbox: bool = False
    api_key: SecretStr | None = None
    secret: SecretStr | None = None
    secrets_file: Path | None = Field(None, description="TOML file with api_key and secret")
    feed: Literal["auto", "ws", "rest"] = "auto"
    poll_interval: float = Field(10.0, gt=0)
    timeout_ms: int = Field(10_000, gt=0)
    stall_timeout: float | None = Field(
        None, gt=0, description="seconds without a closed candle before reconnecting"
    )
    ws_silence_s: float | None = Field(
        None, gt=0, description="a websocket silent this long falls back to REST polling "
        "(default: a quarter of the timeframe, within 5..30 s)")
    ws_retry_s: float = Field(30.0, gt=0, description="while on REST, try the websocket "
                              "again this often")
    stale_after_failures: int = Field(
        3, ge=1, description="consecutive failed reads after which the feed reports itself "
        "stale (entries blocked until data flows again)")
    clock_sync_s: float = Field(300.0, gt=0, description="seconds between measurements of "
                                "the venue's clock (also after every -1021)")
    recv_window_ms: int = Field(
        5000, gt=0, le=60_000,
        description="signed requests older than this are refused by the venue; an unanswered "
        "order not found after it is known never to have arrived")
    reconcile_every: int = Field(
        10, ge=0, description="candle steps between ledger/venue reconciliations (0: at start only)"
    )
    dead_man_s: float = Field(
        0,
        ge=0,
        description="arm the venue's countdown cancel-all with this timeout, refreshed "
        "at a third of it (0: off; only where the exchange has one)",
    )


class DatabaseSettings(_Section):
    url: SecretStr | None = Field(
        None, description="postgresql://user@host:port/db; embedded if unset"
    )
    batch_candles: int = Field(
        5000, gt=0, description="backtest: candle steps per ledger batch (one transaction, "
        "written by the writer thread while the engine goes on)"
    )
    migrate_url: SecretStr | None = Field(
        None,
        description="the schema owner's postgresql:// URL, for migrations and the "
        "service login (then database.url is that login); unset: database.url migrates",
    )
    app_role: str | None = Field(
        "stackbot_app",
        pattern=r"^([a-z_][a-z0-9_]*)?$",
        description="the service's login role (no UPDATE, DELETE or TRUNCATE on the audit "
        "trail); where database.url names the owner, the service logs in as this role "
        "instead; empty: the service stays the connecting user (no protection)",
    )


class PaperSettings(_Section):
    starting_balance: Decimal = Field(Decimal("10000"), gt=0)
    quote: str = "USDT"
    slippage_bps: Decimal = Field(Decimal("2"), ge=0)
    fee_rate: Decimal | None = Field(None, ge=0, description="overrides the market's taker fee")
    participation: Decimal = Field(
        Decimal("0.1"), gt=0, le=1, description="max share of a candle's volume one order fills"
    )

    def round_trip_cost(self, markets: Iterable[MarketSpec] = ()) -> float:
        """Fees and slippage both ways, as a return: what a run prices its bets with (the
        risk manager's costs, the ensemble strategy's break-even). The configured fee, else
        the highest taker fee of ``markets`` (a perpetual's is lower than spot's)."""
        fee = (float(self.fee_rate) if self.fee_rate is not None
               else max((float(m.taker_fee) for m in markets),
                        default=float(MarketSpec("*", "*", "*").taker_fee)))
        return 2 * (fee + float(self.slippage_bps) / 10_000)


class MqttSettings(_Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(1883, gt=0, lt=65536)
    username: str | None = None
    password: SecretStr | None = None
    command_secret: SecretStr | None = Field(None, description="HMAC key for signed commands")
    max_skew_s: int = Field(30, gt=0, description="commands older or newer than this are stale")
    heartbeat_s: float = Field(15.0, gt=0)


class JobSettings(_Section):
    equity_snapshot_s: float = Field(60.0, gt=0)
    housekeeping_s: float = Field(5.0, gt=0, description="stale-data and state-expiry checks")
    model_check_cron: str = Field("0 * * * *", description="model-degradation check (UTC)")
    retrain_cron: str = Field("0 3 1 * *", description="retraining (UTC), default monthly")
    misfire_grace_s: int = Field(300, gt=0)
    anchor_minutes: float = Field(
        10.0,
        gt=0,
        description="audit chain head anchored outside "
        "the database this often (and at every run's end)",
    )


class WebSettings(_Section):
    """``stackbot serve``: the operator console (REST API and dashboard)."""

    host: str = Field("127.0.0.1", description="bind address; loopback unless set")
    port: int = Field(8080, gt=0, lt=65536)
    username: str = Field("operator", min_length=1, description="the operator who logs in; "
                          "recorded with every command")
    password_hash: SecretStr | None = Field(
        None, description="argon2 hash of the password (`stackbot web hash-password`)")
    api_token: SecretStr | None = Field(None, description="bearer token for API clients")
    session_secret: SecretStr | None = Field(
        None, description="signs session cookies; random per start when unset")
    session_hours: float = Field(12.0, gt=0)
    secure_cookies: bool = Field(False, description="mark cookies Secure (behind TLS)")
    login_attempts: int = Field(5, ge=1, description="failed logins per client per window")
    login_window_s: float = Field(300.0, gt=0)
    reports_dir: Path | None = Field(
        None, description="evaluate reports shown by the console (default data_dir/reports)")


class MetricsSettings(_Section):
    """Prometheus metrics of a running bot, on a port of their own."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(9108, gt=0, lt=65536)


class FuturesSettings(_Section):
    """Perpetuals (symbols like ``BTC/USDT:USDT``): the leverage set on the venue at start
    and the margin mode. Spot symbols ignore this section."""

    leverage: int = Field(20, ge=1, le=125, description="leverage per symbol (Binance's "
                          "default is 20x); capped by the market's bracket")
    leverage_per_symbol: dict[str, int] = Field(
        default_factory=dict, description="overrides per symbol, e.g. {\"ETH/USDT:USDT\": 10}")
    margin_mode: Literal["isolated", "cross"] = "isolated"

    def terms(self) -> MarginTerms:
        return MarginTerms(Decimal(self.leverage), MarginMode(self.margin_mode),
                           tuple((s.upper(), Decimal(v))
                                 for s, v in sorted(self.leverage_per_symbol.items())))


class StrategySettings(_Section):
    name: Literal["baseline", "ensemble"] = "baseline"
    shorts: bool = Field(True, description="on perpetuals, the strategy (baseline or "
                         "ensemble) also goes short (spot never does)")
    device: str = Field("auto", description="ensemble inference: auto, cpu or cuda")
    compile: bool = Field(False, description="torch.compile the ensemble on CUDA")
    cuda_graphs: bool = Field(True, description="on CUDA, replay the ensemble's forward from "
                              "CUDA graphs, batches padded to power-of-two buckets")
    max_dispersion: float = Field(0.2, gt=0, description="ensemble: skip entries above this")
    fast: int = Field(12, gt=0)
    slow: int = Field(26, gt=1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
    )

    mode: Mode = Mode.PAPER
    instance: str = "default"
    symbols: Annotated[tuple[str, ...], NoDecode] = ("BTC/USDT",)
    timeframe: str = "1m"
    data_dir: Path = Path("~/.stackbot")
    confirm_live: bool = False
    max_candles: int | None = Field(None, gt=0)
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    exchange: ExchangeSettings = ExchangeSettings()
    database: DatabaseSettings = DatabaseSettings()
    paper: PaperSettings = PaperSettings()
    risk: RiskSettings = RiskSettings()
    strategy: StrategySettings = StrategySettings()
    futures: FuturesSettings = FuturesSettings()
    mqtt: MqttSettings = MqttSettings()
    jobs: JobSettings = JobSettings()
    web: WebSettings = WebSettings()
    metrics: MetricsSettings = MetricsSettings()

    @field_validator("symbols", mode="before")
    @classmethod
    def _split_symbols(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [s for s in (p.strip() for p in value.split(",")) if s]
        if isinstance(value, (list, tuple)):
            bad = [s for s in value if not isinstance(s, str) or s.count("/") != 1
                   or s.count(":") > 1]
            if bad:
                raise ValueError(f"symbols must look like BASE/QUOTE (spot) or "
                                 f"BASE/QUOTE:SETTLE (a perpetual), got {bad}")
            kinds = {":" in s for s in value}
            if len(kinds) > 1:
                raise ValueError(f"one account trades spot or perpetuals, not both: {value}")
            return tuple(s.upper() for s in value)
        return value

    @property
    def perpetuals(self) -> bool:
        """The account trades linear perpetuals (``BTC/USDT:USDT``), not spot."""
        return any(":" in s for s in self.symbols)

    @field_validator("timeframe")
    @classmethod
    def _known_timeframe(cls, value: str) -> str:
        if value not in TIMEFRAME_MS:
            raise ValueError(f"unknown timeframe {value!r}; known: {', '.join(TIMEFRAME_MS)}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings merges file < environment < CLI itself, so that an unknown key from
        # any of them is named; pydantic only validates the merged result.
        return (init_settings,)

    @property
    def home(self) -> Path:
        return self.data_dir.expanduser()

    @property
    def quote_currency(self) -> str:
        return self.paper.quote

    def redacted(self) -> dict[str, Any]:
        """The effective config as plain data with every secret masked."""
        data = self.model_dump(mode="json")  # every SecretStr dumps as '**********'
        # the database URLs keep their user, host and database, which say where it went
        for key, url in (("url", self.database.url), ("migrate_url", self.database.migrate_url)):
            if url is not None:
                data["database"][key] = redact_url(url.get_secret_value())
        return data


def redact_url(url: str) -> str:
    """``postgresql://user:pw@host/db`` -> ``postgresql://user:***@host/db``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _field_names(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    out: dict[str, type[BaseModel] | None] = {}
    for name, info in model.model_fields.items():
        ann = info.annotation
        out[name] = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return out


def _check_env(environ: Mapping[str, str]) -> None:
    """Reject ``STACKBOT_*`` variables that name no setting (typos must not pass silently)."""
    top = _field_names(Settings)
    for var in environ:
        upper = var.upper()
        if not upper.startswith(ENV_PREFIX) or upper in META_ENV:
            continue
        rest = upper[len(ENV_PREFIX) :].lower()
        if rest in top:
            continue
        section, _, key = rest.partition("_")
        sub = top.get(section)
        if sub is not None and key in sub.model_fields:
            continue
        raise ConfigError(f"unknown environment variable {var}: it names no setting")


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        elif value is not None:
            out[key] = value
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _explain(exc: ValidationError, source: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}'")
        else:
            lines.append(f"invalid value for '{key}': {err['msg']}")
    return ConfigError(f"{source}: " + "; ".join(lines))


def load_settings(
    config_file: Path | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the frozen settings: TOML < environment < ``overrides`` (CLI flags).

    ``overrides`` is a nested mapping; ``None`` values mean "flag not given".
    """
    env = os.environ if environ is None else environ
    _check_env(env)
    path = config_file or env.get("STACKBOT_CONFIG")
    file_data = _read_toml(Path(path)) if path else {}
    source = f"config file {path}" if path else "config"
    merged = _merge(_merge(file_data, _env_values(env)), overrides or {})
    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        raise _explain(exc, source) from None
    settings = _with_secrets_file(settings)
    register_settings_secrets(settings)  # masked everywhere from here on
    return settings


def _env_values(env: Mapping[str, str]) -> dict[str, Any]:
    """The ``STACKBOT_*`` variables as a nested mapping (validated later by the model)."""
    top = _field_names(Settings)
    out: dict[str, Any] = {}
    for var, value in env.items():
        upper = var.upper()
        if not upper.startswith(ENV_PREFIX) or upper in META_ENV:
            continue
        rest = upper[len(ENV_PREFIX) :].lower()
        if rest in top and top[rest] is None:
            out[rest] = value
            continue
        section, _, key = rest.partition("_")
        out.setdefault(section, {})[key] = value
    return out


def _with_secrets_file(settings: Settings) -> Settings:
    path = settings.exchange.secrets_file
    if path is None or (settings.exchange.api_key and settings.exchange.secret):
        return settings
    data = _read_toml(path.expanduser())
    unknown = set(data) - {"api_key", "secret"}
    if unknown:
        raise ConfigError(f"secrets file {path}: unknown key(s) {sorted(unknown)}")
    exchange = settings.exchange.model_copy(
        update={
            "api_key": settings.exchange.api_key or _secret(data.get("api_key")),
            "secret": settings.exchange.secret or _secret(data.get("secret")),
        }
    )
    return settings.model_copy(update={"exchange": exchange})


def _secret(value: Any) -> SecretStr | None:
    return SecretStr(str(value)) if value else None


def require_live_ready(settings: Settings) -> None:
    """Live trading needs keys and an explicit confirmation; say exactly what is missing."""
    missing = []
    if settings.exchange.api_key is None or not settings.exchange.api_key.get_secret_value():
        missing.append("an API key (STACKBOT_EXCHANGE_API_KEY or exchange.secrets_file)")
    if settings.exchange.secret is None or not settings.exchange.secret.get_secret_value():
        missing.append("an API secret (STACKBOT_EXCHANGE_SECRET or exchange.secrets_file)")
    if not settings.confirm_live:
        missing.append("an explicit confirmation (--confirm-live or confirm_live = true)")
    if missing:
        raise ConfigError("live mode refuses to start without " + "; ".join(missing))
