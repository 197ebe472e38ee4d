"""structlog set-up: JSON lines (pretty console on a TTY), run id and symbol bound through
context variables, and a last-line filter that masks any registered secret."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog
from pydantic import BaseModel, SecretStr

_SECRETS: set[str] = set()
MASK = "**********"


def register_secrets(values: Iterable[str | None]) -> None:
    """Values that must never reach a log line, whatever field they hide in."""
    global _SPELLED
    for value in values:
        if value and len(value) >= 4:
            _SECRETS.add(value)
    _SPELLED = None


_SPELLED: tuple[str, ...] | None = None


def json_spelled_secrets() -> tuple[str, ...]:
    """Every registered secret as it reads inside a JSON string (escapes applied), so that
    serialised text can be searched for them without walking the value it came from."""
    global _SPELLED
    if _SPELLED is None:
        import orjson

        _SPELLED = tuple(orjson.dumps(s).decode()[1:-1] for s in _SECRETS)
    return _SPELLED


def register_settings_secrets(settings: BaseModel) -> None:
    """The one place secrets are registered: every ``SecretStr`` anywhere in the settings
    (exchange keys, database URLs, MQTT password, the command HMAC key, any added later), and
    the password inside each one that is a URL, on its own, since a driver error may quote it
    without the rest. Every mask (logs, audit payloads, stored venue errors, child output)
    reads this one set."""
    for name in type(settings).model_fields:
        value = getattr(settings, name)  # not probing: the model's own declared fields
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            register_secrets([secret, password_of(secret)])
        elif isinstance(value, BaseModel):
            register_settings_secrets(value)


def password_of(url: str | None) -> str | None:
    """The password in a ``scheme://user:password@host/db`` URL (None without one): it is
    registered as a secret on its own, so a driver error that quotes it is masked too."""
    if not url:
        return None
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def scrub(text: str) -> str:
    """``text`` with every registered secret masked (child output, stored venue errors)."""
    return str(masked(text))


def masked(value: Any) -> Any:
    """``value`` (text, or a JSON-like tree of it) with every registered secret masked."""
    if not _SECRETS:
        return value
    if isinstance(value, str):
        for secret in _SECRETS:
            if secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(masked(v) for v in value)
    return value


def _mask_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if not _SECRETS:
        return event
    return {k: masked(v) for k, v in event.items()}


class _Stderr:
    """Whatever ``sys.stderr`` is at write time (test runners swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure_logging(level: str = "INFO", fmt: str = "auto", stream: Any = None) -> None:
    stream = stream or _Stderr()
    pretty = fmt == "console" or (fmt == "auto" and hasattr(stream, "isatty") and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=True)
        if pretty
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _mask_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)
