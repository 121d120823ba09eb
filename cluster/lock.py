"""Refresh or check the lock: the exact versions of backtrans's runtime dependencies, and theirs.

    python cluster/lock.py          # after the tests pass: write requirements.lock and the pip
                                    # lists of cluster/runtime_env.yaml and cluster/rayjob.yaml
    python cluster/lock.py --check  # print how this environment differs from the lock (CI)

The versions are read from the environment the tests ran in, following pyproject's dependencies
(with their extras) through every package's own requirements, so the lock holds what the driver
was tested with and nothing the tests alone need. Every node of a cluster installs the same list.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
# Files whose pip lists are the lock, between these two marker lines.
MANIFESTS = {ROOT / "cluster/runtime_env.yaml": "  ", ROOT / "cluster/rayjob.yaml": "      "}
BEGIN, END = "# lock: begin (python cluster/lock.py writes this list)", "# lock: end"


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in extras or {""})


def locked_versions(project: str = "backtrans") -> dict[str, str]:
    """name -> installed version for every package the project needs at run time."""
    pins: dict[str, str] = {}
    todo = [(Requirement(r), {""}) for r in distribution(project).requires or [] if "extra ==" not in r]
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        requirement, parent_extras = todo.pop()
        if not _applies(requirement, parent_extras):
            continue
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = distribution(requirement.name)
        except PackageNotFoundError:
            continue  # an optional platform package this machine does not use
        pins[name] = dist.version
        todo += [(Requirement(r), set(requirement.extras) | {""}) for r in dist.requires or []]
    return dict(sorted(pins.items()))


def _lock_lines(pins: dict[str, str]) -> list[str]:
    return [f"{name}=={version}" for name, version in pins.items()]


def read_lock() -> dict[str, str]:
    lines = [line.strip() for line in LOCK.read_text().splitlines()]
    return dict(line.split("==", 1) for line in lines if line and not line.startswith("#"))


def manifest_pins(path: Path) -> list[str]:
    text = path.read_text()
    block = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    return re.findall(r'- "([^"]+)"', block)


def _write_manifest(path: Path, indent: str, lines: list[str]) -> None:
    text = path.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    listed = "".join(f'\n{indent}- "{line}"' for line in lines)
    path.write_text(text[:start] + listed + f"\n{indent}" + text[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="print differences from the lock, change nothing")
    pins = locked_versions()
    if parser.parse_args().check:
        locked = read_lock()
        drift = [f"{n}: lock {locked.get(n, '-')}, here {pins.get(n, '-')}" for n in sorted(set(locked) | set(pins))
                 if locked.get(n) != pins.get(n)]  # fmt: skip
        print(
            "lock: this environment matches requirements.lock" if not drift else "lock: differs from requirements.lock"
        )
        for line in drift:
            print(f"  {line}")
        return 0
    header = "# The versions the tests last passed with (python cluster/lock.py writes this file).\n"
    LOCK.write_text(header + "\n".join(_lock_lines(pins)) + "\n")
    for path, indent in MANIFESTS.items():
        _write_manifest(path, indent, _lock_lines(pins))
    print(f"lock: {len(pins)} packages written to {LOCK.name} and {', '.join(p.name for p in MANIFESTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
