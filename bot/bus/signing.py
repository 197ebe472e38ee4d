"""Signed commands: HMAC-SHA256 over the action and the canonical JSON of the payload, with a
timestamp and a nonce. Pure: verification decides, the caller records.

A command message is a JSON object::

    {"id": "c-42", "ts": 1700000000000, "nonce": "9f1c...", "operator": "alice",
     "reason": "maintenance", "level": "cancel", "instance": "prod-1",
     "account": "prod-1:live:binance", "sig": "<hex>"}

``sig`` = HMAC-SHA256(secret, action + "\\n" + canonical JSON of every other field), where
canonical JSON sorts keys and has no spaces. The action comes from the topic
(``.../cmd/kill``), so a signature for one action is worthless on another; the instance and
the account are signed too, so a command for one instance is refused by every other that
shares the secret, and the id is signed, so it cannot be swapped.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any

ACTIONS = ("kill", "resume", "status")
LEVELS = ("pause", "cancel", "flatten")
MAX_FIELD = 500


def canonical(action: str, fields: Mapping[str, Any]) -> bytes:
    body = json.dumps({k: v for k, v in fields.items() if k != "sig"}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=True)
    return f"{action}\n{body}".encode()


def sign(action: str, fields: Mapping[str, Any], secret: str) -> dict[str, Any]:
    """The fields with their signature added (what an operator's tool sends)."""
    out = dict(fields)
    out["sig"] = hmac.new(secret.encode(), canonical(action, out), hashlib.sha256).hexdigest()
    return out


@dataclass(frozen=True, slots=True)
class Command:
    action: str
    id: str
    ts: int
    nonce: str
    operator: str
    reason: str
    level: str | None


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    id: str | None
    nonce: str | None
    action: str


def verify(action: str, raw: bytes, secret: str, now_ms: int, seen_nonces: Container[str],
           max_skew_ms: int = 30_000, *, instance: str, account: str) -> Command | Rejection:
    """Accept only a well-formed, correctly signed, fresh, never-seen command addressed to
    this ``instance`` and ``account``."""
    if action not in ACTIONS:
        return Rejection(f"unknown action {action!r}", None, None, action)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return Rejection("payload is not JSON", None, None, action)
    if not isinstance(data, dict):
        return Rejection("payload is not a JSON object", None, None, action)
    cid = data.get("id") if isinstance(data.get("id"), str) else None
    nonce = data.get("nonce") if isinstance(data.get("nonce"), str) else None
    sig = data.get("sig")
    if not isinstance(sig, str) or not sig:
        return Rejection("unsigned command", cid, nonce, action)
    expected = hmac.new(secret.encode(), canonical(action, data), hashlib.sha256).hexdigest()
    # compare bytes: a non-ASCII "signature" is simply wrong, not an error
    if not hmac.compare_digest(sig.encode("utf-8", "replace"), expected.encode()):
        return Rejection("bad signature", cid, nonce, action)
    # signed from here on: the fields are the operator's, check their shape
    for key in ("id", "nonce", "operator", "reason", "instance", "account"):
        value = data.get(key)
        if not isinstance(value, str) or not value or len(value) > MAX_FIELD:
            return Rejection(f"field {key!r} must be a non-empty string", cid, nonce, action)
    ts = data.get("ts")
    if not isinstance(ts, int) or isinstance(ts, bool):
        return Rejection("field 'ts' must be integer milliseconds", cid, nonce, action)
    for key, mine in (("instance", instance), ("account", account)):
        if data[key] != mine:
            return Rejection(f"signed for {key} {data[key][:80]!r}, not this one ({mine!r})",
                             cid, nonce, action)
    if abs(now_ms - ts) > max_skew_ms:
        return Rejection(f"stale: {abs(now_ms - ts) // 1000}s from now (limit "
                         f"{max_skew_ms // 1000}s)", cid, nonce, action)
    if data["nonce"] in seen_nonces:
        return Rejection("replayed nonce", cid, nonce, action)
    level = data.get("level")
    if action == "kill" and level not in LEVELS:
        return Rejection(f"kill needs level in {LEVELS}", cid, nonce, action)
    unknown = set(data) - {"id", "ts", "nonce", "operator", "reason", "level", "instance",
                           "account", "sig"}
    if unknown:
        return Rejection(f"unknown field(s) {sorted(unknown)}", cid, nonce, action)
    return Command(action, data["id"], ts, data["nonce"], data["operator"], data["reason"],
                   level if action == "kill" else None)
