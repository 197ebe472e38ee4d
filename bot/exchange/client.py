"""Building a ccxt client from settings: base-URL override (REST and websocket), sandbox,
keys, timeouts, and market loading limited to what the account trades: spot, or linear
(USDT-margined) swaps for a perpetuals account."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bot.config import ExchangeSettings
from bot.errors import ConfigError


def _rebase(url: str, rest: str | None, ws: str | None) -> str:
    parts = urlsplit(url)
    target = ws if parts.scheme in ("ws", "wss") else rest
    if not target:
        return url
    base = urlsplit(target)
    path = base.path.rstrip("/") + parts.path
    return urlunsplit((base.scheme, base.netloc, path, parts.query, parts.fragment))


def rebase_urls(tree: Any, rest: str | None, ws: str | None) -> Any:
    """Point every URL of a ccxt ``urls['api']`` tree at the override, keeping paths."""
    if isinstance(tree, dict):
        return {k: rebase_urls(v, rest, ws) for k, v in tree.items()}
    if isinstance(tree, str) and "://" in tree:
        return _rebase(tree, rest, ws)
    return tree


def ws_from_rest(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path, "", ""))


def make_exchange(cfg: ExchangeSettings, with_ws: bool = True, swaps: bool = False) -> Any:
    """A ccxt async client (ccxt.pro when websockets are wanted and available). ``swaps``: the
    account trades linear perpetuals (``BTC/USDT:USDT``), so only those markets load."""
    import ccxt.async_support as ccxt_async

    module: Any = ccxt_async
    if with_ws:
        try:
            import ccxt.pro as ccxt_pro

            module = ccxt_pro
        except ImportError:  # pragma: no cover - ccxt >= 4 ships pro
            module = ccxt_async
    # not adapter probing: ccxt names each exchange's class after its id (a lookup by name)
    cls = getattr(module, cfg.name, None)
    if cls is None:
        raise ConfigError(f"exchange.name: ccxt has no exchange called {cfg.name!r}")
    params: dict[str, Any] = {
        "enableRateLimit": True,
        "timeout": cfg.timeout_ms,
        "options": {"defaultType": "swap" if swaps else "spot",
                    "fetchMarkets": {"types": ["linear"] if swaps else ["spot"]},
                    "fetchCurrencies": False, "fetchMargins": False,
                    "adjustForTimeDifference": False, "recvWindow": cfg.recv_window_ms},
    }
    if cfg.api_key is not None:
        params["apiKey"] = cfg.api_key.get_secret_value()
    if cfg.secret is not None:
        params["secret"] = cfg.secret.get_secret_value()
    exchange = cls(params)
    if cfg.sandbox:
        exchange.set_sandbox_mode(True)
    if cfg.url or cfg.ws_url:
        ws = cfg.ws_url or (ws_from_rest(cfg.url) if cfg.url else None)
        exchange.urls["api"] = rebase_urls(exchange.urls["api"], cfg.url, ws)
        keep_host_error_map(exchange, "linear" if swaps else "spot")
    return exchange


def keep_host_error_map(exchange: Any, market: str = "spot") -> None:
    """ccxt's binance chooses its per-market error map (``exceptions['spot']``: -1008 server
    busy, -3022 account banned ...; ``exceptions['linear']``: -2019 margin insufficient, -4046
    margin type already set ...) by the request's host name, so a rebased URL (proxy,
    simulator) silently falls back to the general map. Merge the account's map into the
    general one, it first, as the real host would have it. A copy: ccxt's maps stay
    untouched."""
    maps = exchange.exceptions
    own = maps.get(market) if isinstance(maps, dict) else None
    if not isinstance(own, dict):
        return  # this exchange keeps one map for all hosts
    exchange.exceptions = {**maps, **{kind: {**(maps.get(kind) or {}), **(own.get(kind) or {})}
                                      for kind in ("exact", "broad")}}
