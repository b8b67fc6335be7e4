"""Real headline text for traces and bursts: the vendored examples and Benzinga headlines."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def headlines() -> tuple[str, ...]:
    """154 distinct real headlines (dividends, buybacks, M&A, guidance, opinion pieces...)."""
    text = files("loadtest").joinpath("data/headlines.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())
