"""What ``make test-latest`` ran against, next to what the lock pins: the report of a refresh to come.

Run by the interpreter of the unlocked environment: it lists every package whose installed
version differs from ``--lock``, and the newest release of each that a range in ``pyproject.toml``
or the torch constraint holds back (from ``pip list --outdated``), then the suite's verdict.
Standard library only.

    python locks/drift.py --lock locks/dev.txt --suite-exit 0
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

NOT_LOCKED = {"burst-nli", "pip"}
"""In every environment and in no lock: the project itself, and the installer."""
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s\\;]+)", re.MULTILINE)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path) -> dict[str, str]:
    return {normalize(m["name"]): m["version"] for m in _PIN.finditer(path.read_text(encoding="utf-8"))}


def installed() -> dict[str, str]:
    return {normalize(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}


def newest_releases() -> dict[str, str]:
    """``name -> newest version`` for installed packages with a newer release anywhere."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--outdated", "--format=json", "--disable-pip-version-check"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        print(f"(pip list --outdated failed: {done.stderr.strip()[-300:]})")
        return {}
    return {normalize(row["name"]): row["latest_version"] for row in json.loads(done.stdout or "[]")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", type=Path, required=True)
    parser.add_argument("--suite-exit", type=int, required=True, help="pytest's exit status")
    args = parser.parse_args(argv)

    pinned, now, newest = locked(args.lock), installed(), newest_releases()
    rows = []
    for name in sorted((set(pinned) | set(now)) - NOT_LOCKED):
        lock_version, tested = pinned.get(name, "-"), now.get(name, "-")
        beyond = newest.get(name, "")
        if lock_version != tested or beyond:
            rows.append((name, lock_version, tested, beyond))
    print(f"\nmake test-latest: what moved since {args.lock}")
    if rows:
        header = ("package", "locked", "tested now", "newer, held back")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
        for row in [header, *rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    else:
        print("nothing: the lock already holds the newest releases")
    verdict = "passed" if args.suite_exit == 0 else f"FAILED (pytest exit {args.suite_exit})"
    print(f"the suite on these versions: {verdict}")
    if args.suite_exit == 0 and rows:
        print("`make lock UPGRADE=1` would move the lock to the 'tested now' column")
    return 0


if __name__ == "__main__":
    sys.exit(main())
