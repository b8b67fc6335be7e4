"""Pairs of text to pairs of token ids: hypotheses through the model's cache, premises through a
small LRU, a loop tick's new premises in one call.

One home for tokenizing, wherever it runs: admission in a single-process worker, and a front
process of a split worker (``worker/remote_engine.py``), whose model process then never sees text.

Premises go through a small LRU (``PREMISE_CACHE_SIZE``): the headline service makes several calls
about one headline at once, and the headline is tokenized once for all of them; its pairs in
those jobs share one tuple, which the batcher's merging of identical pairs compares first by
identity.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

import anyio

from batching import InvalidInput
from worker.model import NliModel
from worker.pairs import PairTokens

Pair = tuple[str, str]

INLINE_TOKENIZE_CHARS = 100_000
"""New premise text in one tick beyond which it is tokenized off the event loop: a burst of
headlines stays inline, a flood of long texts leaves the loop free to answer."""


class PremiseCache:
    """Recent premises' token ids; the least recently used goes first. Size 0 keeps none."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def lookup(self, texts: Iterable[str]) -> tuple[dict[str, tuple[int, ...]], list[str]]:
        """(the ids of the texts held, the texts not held)."""
        found: dict[str, tuple[int, ...]] = {}
        missing = []
        for text in texts:
            ids = self._ids.get(text)
            if ids is None:
                missing.append(text)
            else:
                self._ids.move_to_end(text)
                found[text] = ids
        return found, missing

    def add(self, text: str, ids: tuple[int, ...]) -> None:
        if self.size < 1:
            return
        self._ids[text] = ids
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)


class PairTokenizer:
    """Token ids for one model's pairs: ``hypotheses`` checks a job's pairs as it is admitted,
    ``tokenize_tick`` (or ``premise_ids_off_loop`` then ``pairs``) assembles a tick's jobs."""

    def __init__(self, model: NliModel, premise_cache_size: int) -> None:
        self.model = model
        self.premises = PremiseCache(premise_cache_size)

    def hypotheses(self, pairs: Sequence[Pair]) -> list[tuple[int, ...]]:
        """Each pair's hypothesis ids (cached); ``InvalidInput`` naming a pair that cannot fit."""
        hypotheses = []
        for index, (_, hypothesis) in enumerate(pairs):
            ids = self.model.hypothesis_ids(hypothesis)
            try:
                self.model.layout.check_hypothesis(ids)
            except ValueError as err:
                raise InvalidInput(f"pairs[{index}]: {err}") from err
            hypotheses.append(ids)
        return hypotheses

    def tokenize(self, pairs: Sequence[Pair]) -> list[PairTokens]:
        """Token ids of one job's pairs, now."""
        return self.tokenize_tick([pairs])[0]

    def tokenize_tick(self, jobs: Sequence[Sequence[Pair]]) -> list[list[PairTokens]]:
        """Token ids of many jobs' pairs, their new premises in one call: what a tick costs."""
        return self.pairs(jobs, [self.hypotheses(pairs) for pairs in jobs])

    def premise_ids(self, texts: Iterable[str]) -> dict[str, tuple[int, ...]]:
        """Each text's ids: the cached ones, and the rest tokenized in one call."""
        found, missing = self.premises.lookup(texts)
        return self._remember(found, missing, self.model.encode_texts(missing))

    async def premise_ids_off_loop(self, texts: Iterable[str]) -> dict[str, tuple[int, ...]]:
        """``premise_ids``, but a tick with much new text is tokenized in a worker thread (the
        Rust tokenizer holds no GIL), so the loop keeps answering (``/ping``) meanwhile; a
        usual tick is cheaper inline than a thread hop."""
        found, missing = self.premises.lookup(texts)
        if sum(map(len, missing)) > INLINE_TOKENIZE_CHARS:
            encoded = await anyio.to_thread.run_sync(self.model.encode_texts, missing)
        else:
            encoded = self.model.encode_texts(missing)
        return self._remember(found, missing, encoded)

    def pairs(
        self,
        jobs: Sequence[Sequence[Pair]],
        hypotheses: Sequence[list[tuple[int, ...]]],
        premises: dict[str, tuple[int, ...]] | None = None,
    ) -> list[list[PairTokens]]:
        """Each job's pairs assembled from its hypotheses' ids and the premises' ids (looked up
        here when not given)."""
        if premises is None:
            premises = self.premise_ids(premises_of(jobs))
        pair = self.model.pair
        return [
            [pair(premises[premise], ids) for (premise, _), ids in zip(pairs, job_hypotheses)]
            for pairs, job_hypotheses in zip(jobs, hypotheses)
        ]

    def _remember(
        self, found: dict[str, tuple[int, ...]], missing: list[str], encoded: list[tuple[int, ...]]
    ) -> dict[str, tuple[int, ...]]:
        for text, ids in zip(missing, encoded):
            found[text] = ids
            self.premises.add(text, ids)
        return found


def premises_of(jobs: Sequence[Sequence[Pair]]) -> dict[str, None]:
    """The distinct premises of jobs' pairs, in order."""
    return dict.fromkeys(premise for pairs in jobs for premise, _ in pairs)
