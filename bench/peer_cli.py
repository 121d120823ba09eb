"""The command line of a peer (bench/peer_*.py): written by `runs.py`, read by the peer.

Kept apart from `runs.py` so that a peer's start-up, which its measured wall time includes, imports
nothing more than argparse for it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def peer_argv(module: str, url: str, rows: Path, concurrency: int, workdir: Path) -> list[str]:
    """Run the peer `module` against the simulator at `url`, on `rows`, with `concurrency` requests in flight."""
    return [
        sys.executable,
        "-m",
        module,
        "--url",
        url,
        "--rows",
        str(rows),
        "--concurrency",
        str(concurrency),
        "--workdir",
        str(workdir),
    ]


def peer_parser() -> argparse.ArgumentParser:
    """Reads what `peer_argv` writes; a peer adds its own options."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--rows", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--workdir", required=True)
    return parser
