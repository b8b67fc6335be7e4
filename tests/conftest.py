"""Shared pytest fixtures, one labelled section per module they serve."""

from __future__ import annotations

import pytest

# --- worker.model -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model():
    """The 2-layer synthetic DistilBERT on CPU fp32: real vocabulary, random fixed weights."""
    from worker.model import NliModel

    return NliModel.load("synthetic:tiny", device="cpu")
