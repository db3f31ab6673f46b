"""Redis memory of the audit log as it grows, with the log sealed into tiles or not.

Starts an embedded Redis and, in this process, the gateway's own audit log writer
(gateway/store/audit_log.py) and sealer (gateway/store/sealed_log.py), with a tile
store in a temp dir. It appends decision-shaped entries (the details of a typical
`action_decided` entry, about 870 bytes of export line) in batches of 256, as the
group commit does under load, lets the sealer keep up, and at each checkpoint
(10k, 100k, 1M entries by default) prints Redis `used_memory` above the empty
server's, the MEMORY USAGE of the entries list and the tree hash, what the tile
store holds on disk, and the entries left in Redis. With --no-seal nothing is
sealed (the log before issue 14). docs/operations.md quotes its figures.

    .venv/bin/python bench/audit_memory.py [--at 10000,100000,1000000] [--no-seal] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.domain.audit.entry import EntryDraft, format_timestamp
from gateway.domain.audit.keys import SigningKeys
from gateway.store.audit_log import AuditLog
from gateway.store.connection import close, connect
from gateway.store.embedded import EmbeddedRedis, find_server_binary
from gateway.store.intents import IntentWriter, Lifetimes
from gateway.store.keys import KeySpace
from gateway.store.sealed_log import SealedLog, Sealer
from gateway.store.tile_store import DirectoryTileStore

BATCH = 256


def decision_draft(n: int, now: float) -> EntryDraft:
    """An entry shaped like a gateway decision's (services/decisions.py)."""
    return EntryDraft(
        timestamp=format_timestamp(now),
        event_type="action_decided",
        actor=f"billing-agent-{n % 20}",
        actor_type="agent",
        action_id=f"act-{n:012d}",
        action_type="payment.create" if n % 3 else "search",
        resource=f"/customers/{n % 5000}/invoices/{n}",
        details={
            "session_id": f"session-{n // 40}",
            "parameters": {"amount": n % 997, "currency": "EUR", "note": "invoice " + "x" * 40},
            "reasoning": "the customer asked for the March invoice to be paid by card",
            "labels": {"env": "prod", "team": "billing"},
            "reason": "no rule matched",
            "findings": [],
            "matched_rules": [],
            "hold_id": "",
            "hold_expires_at": "",
            "paused_session": False,
            "trace_id": f"{n:032x}",
        },
        outcome="allow",
    )


async def used_memory(client: object) -> int:
    info = await client.info("memory")  # type: ignore[attr-defined]
    return int(info["used_memory"])


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


async def measure(checkpoints: list[int], seal: bool) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory(prefix="agentgw-audit-memory-") as tmp:
        root = Path(tmp)
        redis = EmbeddedRedis(root / "data", binary=find_server_binary(None), appendfsync="no")
        await redis.start()
        client = connect(redis.url, name="agentgw:bench:audit-memory")
        keys = KeySpace("bench")
        try:
            baseline = await used_memory(client)
            log = AuditLog(
                client,
                IntentWriter(keys, Lifetimes(), single_node=True),
                SigningKeys(root / "key.pem", root / "keys"),
                "bench.local/audit",
                time.time,
            )
            store = DirectoryTileStore(root / "tiles")
            log.sealed = SealedLog(store)
            sealer = Sealer(client, keys, store)
            writer = asyncio.create_task(log.run())
            rows, appended, started = [], 0, time.perf_counter()
            for target in checkpoints:
                while appended < target:
                    count = min(BATCH, target - appended)
                    now = time.time()
                    drafts = [decision_draft(appended + i, now) for i in range(count)]
                    await log.commit(drafts)
                    appended += count
                    if seal and appended % (16 * BATCH) == 0:
                        await sealer.seal_all()
                if seal:
                    await sealer.seal_all()
                entries_bytes = await client.memory_usage(keys.audit_entries, samples=0) or 0
                tree_bytes = await client.memory_usage(keys.audit_tree, samples=0) or 0
                rows.append(
                    {
                        "entries": appended,
                        "sealed": seal,
                        "redis_used_bytes": await used_memory(client) - baseline,
                        "entries_list_bytes": int(entries_bytes),
                        "tree_hash_bytes": int(tree_bytes),
                        "entries_in_redis": int(await client.llen(keys.audit_entries)),
                        "tree_nodes_in_redis": int(await client.hlen(keys.audit_tree)),
                        "tile_store_bytes": disk_bytes(root / "tiles") if seal else 0,
                        "seconds": round(time.perf_counter() - started, 1),
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            return rows
        finally:
            await close(client)
            await redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--at", default="10000,100000,1000000", help="entry counts to measure at")
    parser.add_argument("--no-seal", action="store_true", help="keep everything in Redis")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON array")
    args = parser.parse_args()
    checkpoints = sorted(int(n) for n in args.at.split(","))
    rows = asyncio.run(measure(checkpoints, seal=not args.no_seal))
    if args.json:
        print(json.dumps(rows))
        return
    print(
        f"{'entries':>9} {'Redis used':>12} {'list':>11} {'tree':>11} {'in Redis':>9} {'tiles':>12}"
    )
    for row in rows:
        print(
            f"{row['entries']:>9} {row['redis_used_bytes']:>12,} {row['entries_list_bytes']:>11,} "
            f"{row['tree_hash_bytes']:>11,} {row['entries_in_redis']:>9} "
            f"{row['tile_store_bytes']:>12,}"
        )


if __name__ == "__main__":
    main()
