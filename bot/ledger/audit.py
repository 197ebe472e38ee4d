"""``stackbot audit verify``: walk the hash chain of ``audit_events`` and name the first broken
link. The database computes each link on insert (migration 0004); this re-computes every hash
independently, so a row altered with the triggers switched off is caught.

The chain and its head live in the same database, so someone who rewrites the table and the
head together, recomputing every hash, leaves a chain that verifies. Anchors close that: the
head (seq and hash) is written outside the database, to ``data_dir/audit-anchors.jsonl``
(appended, one JSON object a line), to the log, and on a retained MQTT topic, every few
minutes and at the end of every run. ``verify --anchors FILE`` then checks that the chain
still passes through every anchored link, and names the first anchor it no longer matches.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.errors import DataError
from bot.logs import get_logger
from bot.ports import Ledger

log = get_logger("audit")

GENESIS = "0" * 64
_ROWS = text(
    "SELECT id, seq, account, run_id, (floor(extract(epoch from ts) * 1000))::bigint AS ts_ms, "
    "kind, entity, entity_id, payload::text AS payload, prev_hash, hash "
    "FROM audit_events ORDER BY seq")


@dataclass(frozen=True)
class ChainReport:
    rows: int
    ok: bool
    broken_seq: int | None = None
    broken_id: int | None = None
    reason: str = ""
    anchors: int = 0  # anchors the chain was checked against

    def describe(self) -> str:
        if self.ok:
            through = f", through all {self.anchors} anchors" if self.anchors else ""
            return f"audit chain intact: {self.rows} rows{through}"
        return (f"audit chain BROKEN at seq {self.broken_seq} (audit_events.id "
                f"{self.broken_id}): {self.reason}")


@dataclass(frozen=True)
class Anchor:
    """One link of the chain, recorded outside the database."""

    seq: int
    hash: str
    at_ms: int  # wall time it was written

    def describe(self) -> str:
        at = datetime.fromtimestamp(self.at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"the anchor of seq {self.seq} written {at}"


def append_anchor(path: Path, anchor: Anchor) -> None:
    """Append one anchor line and make it durable before returning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(asdict(anchor), separators=(",", ":")) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_anchors(path: Path) -> list[Anchor]:
    """Every anchor in the file, by seq. A line that is not an anchor is an error naming it."""
    out = []
    try:
        text_ = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the anchors file {path}: {exc}") from None
    for n, line in enumerate(text_.splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            a = Anchor(int(d["seq"]), str(d["hash"]), int(d["at_ms"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}:{n}: not an audit anchor ({exc})") from None
        if a.seq < 1 or len(a.hash) != 64:
            raise DataError(f"{path}:{n}: not an audit anchor (seq {a.seq}, hash {a.hash!r})")
        out.append(a)
    return sorted(out, key=lambda a: (a.seq, a.at_ms))


def link_hash(seq: int, account: str, run_id: str, ts_ms: int, kind: str, entity: str,
              entity_id: str, payload: str, prev_hash: str) -> str:
    canonical = "|".join((str(seq), account, run_id, str(ts_ms), kind, entity, entity_id,
                          payload, prev_hash))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def verify_chain(engine: AsyncEngine, anchors: Sequence[Anchor] = ()) -> ChainReport:
    """Walk the chain; with ``anchors``, it must also pass through every anchored link."""
    prev, expected, n = GENESIS, 1, 0
    pinned: dict[int, list[Anchor]] = {}
    for a in anchors:
        pinned.setdefault(a.seq, []).append(a)
    # one snapshot for the rows and the head: a bot writing meanwhile must not look like rows
    # removed from the end (the head read later than the rows)
    async with engine.connect() as plain_conn:
        conn = await plain_conn.execution_options(isolation_level="REPEATABLE READ")
        await conn.begin()
        result = await conn.stream(_ROWS)
        async for r in result:
            n += 1
            for a in pinned.get(r.seq, ()):
                if a.hash != r.hash:
                    return ChainReport(n, False, r.seq, r.id,
                                       f"{a.describe()} no longer matches: the chain was "
                                       f"rewritten at or before this link")
            if r.seq != expected:
                return ChainReport(n, False, expected, r.id,
                                   f"link {expected} is missing (next is {r.seq})")
            if r.prev_hash != prev:
                return ChainReport(n, False, r.seq, r.id,
                                   "prev_hash does not match the previous row's hash")
            h = link_hash(r.seq, r.account, r.run_id, r.ts_ms, r.kind, r.entity, r.entity_id,
                          r.payload, r.prev_hash)
            if h != r.hash:
                return ChainReport(n, False, r.seq, r.id,
                                   "row content does not match its hash (altered)")
            prev, expected = r.hash, expected + 1
        head = (await conn.execute(text("SELECT seq, hash FROM audit_chain_head WHERE id = 1"))
                ).first()
    if head is not None and (head.seq != expected - 1 or head.hash != prev):
        return ChainReport(n, False, expected, None,
                           f"the chain head says {head.seq} rows; the table ends at "
                           f"{expected - 1} (rows removed from the end)")
    beyond = [a for a in anchors if a.seq >= expected]
    if beyond:
        return ChainReport(n, False, beyond[0].seq, None,
                           f"{beyond[0].describe()} is past the end of the chain "
                           f"({expected - 1} rows): rows were removed")
    return ChainReport(n, True, anchors=len(anchors))


async def anchor_chain(ledger: Ledger, path: Path) -> Anchor | None:
    """Read the chain head through the ledger and append it to ``path``."""
    head = await ledger.chain_head()
    if head is None:
        return None
    a = Anchor(head[0], head[1], int(datetime.now(UTC).timestamp() * 1000))
    append_anchor(path, a)
    log.info("audit_anchor", seq=a.seq, hash=a.hash, file=str(path))
    return a
