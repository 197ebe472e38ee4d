"""``stackbot audit verify``: walk the hash chain of ``audit_events`` and name the first broken
link. The database computes each link on insert (migration 0004); this re-computes every hash
independently, so a row altered with the triggers switched off is caught."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

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

    def describe(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.rows} rows"
        return (f"audit chain BROKEN at seq {self.broken_seq} (audit_events.id "
                f"{self.broken_id}): {self.reason}")


def link_hash(seq: int, account: str, run_id: str, ts_ms: int, kind: str, entity: str,
              entity_id: str, payload: str, prev_hash: str) -> str:
    canonical = "|".join((str(seq), account, run_id, str(ts_ms), kind, entity, entity_id,
                          payload, prev_hash))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def verify_chain(engine: AsyncEngine) -> ChainReport:
    prev, expected, n = GENESIS, 1, 0
    async with engine.connect() as conn:
        result = await conn.stream(_ROWS)
        async for r in result:
            n += 1
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
    return ChainReport(n, True)
