"""Database URLs: users give a plain ``postgresql://`` URL; the driver is the app's business."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from bot.errors import ConfigError

_ACCEPTED = {
    "postgresql",
    "postgres",
    "postgresql+asyncpg",
    "postgresql+psycopg",
    "postgresql+psycopg2",
}


def async_url(url: str) -> str:
    """``postgresql://u@h:p/db`` -> ``postgresql+asyncpg://u@h:p/db``; anything else is refused."""
    parts = urlsplit(url)
    if parts.scheme not in _ACCEPTED:
        raise ConfigError(
            f"database URL scheme {parts.scheme!r} is not supported: PostgreSQL is the only "
            "dialect (use postgresql://user@host:port/db)"
        )
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg"))


def plain_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql"))
