"""Runs one `Sealer.seal_once()` against a test Redis and kills itself (SIGKILL) at a
chosen step, for tests/integration/test_sealing_crash.py.

    python -m tests.seal_driver --redis-url URL --prefix P --tiles DIR --kill-at STEP

STEP is a step the sealer reports through its `on_step` hook ("lease", "wrote
<path>", "recorded"), or "inside <path>": inside the tile store's write of <path>,
after its temporary file is written and fsynced and before it is linked into place.
The process then dies as a crash would, with nothing cleaned up: no `finally`, no
lease released, no connection closed. If the step never comes, it prints what the
sealer did ("sealed" or "nothing") and exits 0, which the tests treat as a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from gateway.store.connection import close, connect
from gateway.store.keys import KeySpace
from gateway.store.sealed_log import Sealer
from gateway.store.tile_store import DirectoryTileStore


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class DyingTileStore(DirectoryTileStore):
    """A directory store whose write of one path dies between the temporary file and
    its link: the store's own code runs up to there (os.link is where it dies)."""

    def __init__(self, root: Path, dying_path: str) -> None:
        super().__init__(root)
        self.dying_path = dying_path

    def write(self, path: str, data: bytes) -> None:
        if path != self.dying_path:
            super().write(path, data)
            return
        real_link = os.link

        def link_then_die(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
            if str(target) == str(self.root / path):
                die()
            real_link(source, target, *args, **kwargs)

        os.link = link_then_die  # type: ignore[assignment]  # the os tile_store.py calls
        try:
            super().write(path, data)
        finally:
            os.link = real_link


async def run(args: argparse.Namespace) -> str:
    client = connect(args.redis_url)
    dying = args.kill_at.removeprefix("inside ") if args.kill_at.startswith("inside ") else ""
    store = DyingTileStore(args.tiles, dying) if dying else DirectoryTileStore(args.tiles)
    sealer = Sealer(
        client,
        KeySpace(args.prefix),
        store,
        margin_entries=args.margin,
        lease_seconds=args.lease_seconds,
        owner="seal-driver",
    )

    def on_step(step: str) -> None:
        print(step, flush=True)
        if step == args.kill_at:
            die()

    sealer.on_step = on_step
    try:
        return "sealed" if await sealer.seal_once() else "nothing"
    finally:
        await close(client)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seal_driver")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--tiles", type=Path, required=True)
    parser.add_argument("--kill-at", required=True)
    parser.add_argument("--lease-seconds", type=float, default=0.5)
    parser.add_argument("--margin", type=int, default=0)
    args = parser.parse_args(argv)
    print(asyncio.run(run(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
