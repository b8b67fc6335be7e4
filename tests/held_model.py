"""A model whose batches wait inside the model thread until a test releases them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from worker.model import NliModel


def hold_batches(model: NliModel, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """From now on the model thread waits inside each batch until released: ``(entered, release)``.

    Start it once the engine is ready (warm-up runs batches too), and always set ``release``.
    """
    entered, release = threading.Event(), threading.Event()
    run = model.run

    def held_run(batch):  # type: ignore[no-untyped-def]
        entered.set()
        release.wait(30)
        return run(batch)

    monkeypatch.setattr(model, "run", held_run)
    return entered, release


@contextmanager
def held_batches(model: NliModel, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """``hold_batches`` for the length of a block, released on the way out."""
    entered, release = hold_batches(model, monkeypatch)
    try:
        yield entered, release
    finally:
        release.set()
