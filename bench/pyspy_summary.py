"""Summaries of py-spy's raw (collapsed-stack) output: where a process spends its CPU samples."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frames(stack: str) -> list[str]:
    out = []
    for frame in stack.split(";"):
        match = FRAME.match(frame.strip())
        if match is None:
            out.append(frame.strip())
            continue
        path = match["file"]
        for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
            if marker in path:
                path = path.split(marker, 1)[1]
                break
        out.append(f"{match['func']} ({path})")
    return out


def summarize(path: Path, top: int = 12) -> dict:
    """Total samples, and the functions with the most samples: self (leaf) and inclusive."""
    leaf: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in Path(path).read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = _frames(stack)
        total += n
        leaf[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return {
        "samples": total,
        "self": [(f, round(c / total, 3)) for f, c in leaf.most_common(top)] if total else [],
        "inclusive": [(f, round(c / total, 3)) for f, c in inclusive.most_common(top * 3)] if total else [],
    }


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="summarize py-spy raw profiles")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    for file in args.files:
        result = summarize(Path(file), args.top)
        print(f"== {file}: {result['samples']} samples")
        print("-- self")
        for name, share in result["self"]:
            print(f"{share:7.1%}  {name}")
        print("-- inclusive")
        for name, share in result["inclusive"]:
            print(f"{share:7.1%}  {name}")


if __name__ == "__main__":
    main()
