"""Pairs as token ids: where a tokenizer puts its special tokens, and how much premise fits.

Pairs are assembled from a *pair template* probed from the tokenizer at load time rather than from
per-architecture code: transformers 5 tokenizers no longer expose
``build_inputs_with_special_tokens``, and probing covers BERT, DeBERTa-v3 and RoBERTa layouts alike.
``PairLayout`` is the one place that knows how much of a premise fits beside a hypothesis
(``premise_room``): the pair's cost, its assembly and its collation all cut the premise there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

PROBES = (("hello world", "good morning"), ("the quick brown fox", "jumps"))
"""Two probes of different lengths: the first derives the template, the second checks it."""


class PairTokens(NamedTuple):
    """One premise/hypothesis pair, still unassembled.

    The premise is tokenized once per job and its tuple is shared by all of that job's pairs.
    A named tuple, not a frozen dataclass: several are built per job on the event loop, and a
    tuple builds faster; it hashes the same way (identical pairs merge on it).
    """

    premise_ids: tuple[int, ...]  # no special tokens, untruncated
    hypothesis_ids: tuple[int, ...]  # no special tokens
    length: int  # assembled length after only_first truncation, special tokens included


@dataclass(frozen=True, slots=True)
class PairTemplate:
    """Where a tokenizer puts its special tokens and token types around a pair (A, B).

    The assembled pair is ``prefix + A + middle + B + suffix``; each special token keeps its own
    type id because layouts differ (DeBERTa-v3 types the final [SEP] 1, the middle one 0).
    """

    prefix_ids: tuple[int, ...]
    middle_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]
    prefix_types: tuple[int, ...]
    middle_types: tuple[int, ...]
    suffix_types: tuple[int, ...]
    first_type: int
    second_type: int

    @property
    def num_special_tokens(self) -> int:
        return len(self.prefix_ids) + len(self.middle_ids) + len(self.suffix_ids)

    def assemble(self, first: Sequence[int], second: Sequence[int]) -> tuple[list[int], list[int]]:
        """(input_ids, token_type_ids) of the pair, without any truncation."""
        ids = [*self.prefix_ids, *first, *self.middle_ids, *second, *self.suffix_ids]
        types = [
            *self.prefix_types,
            *[self.first_type] * len(first),
            *self.middle_types,
            *[self.second_type] * len(second),
            *self.suffix_types,
        ]
        return ids, types


def _encode_pair(tokenizer: Any, first: str, second: str) -> tuple[list[int], list[int]]:
    enc = tokenizer(first, second, add_special_tokens=True, return_token_type_ids=True)
    ids = list(enc["input_ids"])
    types = enc.get("token_type_ids")
    return ids, list(types) if types is not None else [0] * len(ids)


def _find(haystack: Sequence[int], needle: Sequence[int], start: int) -> int:
    for i in range(start, len(haystack) - len(needle) + 1):
        if list(haystack[i : i + len(needle)]) == list(needle):
            return i
    return -1


def probe_pair_template(tokenizer: Any) -> PairTemplate:
    """Derive the pair template by locating two probe texts inside their encoded pair.

    Works for any tokenizer that encodes each segment of a pair as it encodes the segment alone
    (true of WordPiece, SentencePiece/Metaspace and RoBERTa-style byte-level BPE with a leading
    text). Raises ValueError when it cannot, rather than assembling pairs wrongly.
    """
    first, second = PROBES[0]
    a = tokenizer(first, add_special_tokens=False)["input_ids"]
    b = tokenizer(second, add_special_tokens=False)["input_ids"]
    ids, types = _encode_pair(tokenizer, first, second)
    i = _find(ids, a, 0)
    j = _find(ids, b, i + len(a)) if i >= 0 else -1
    if i < 0 or j < 0 or not a or not b:
        raise ValueError(
            f"cannot derive a pair template for {type(tokenizer).__name__}: the probe segments "
            f"{a} and {b} were not found in the encoded pair {ids}"
        )
    end_b = j + len(b)
    template = PairTemplate(
        prefix_ids=tuple(ids[:i]),
        middle_ids=tuple(ids[i + len(a) : j]),
        suffix_ids=tuple(ids[end_b:]),
        prefix_types=tuple(types[:i]),
        middle_types=tuple(types[i + len(a) : j]),
        suffix_types=tuple(types[end_b:]),
        first_type=types[i],
        second_type=types[j],
    )
    _check_template(tokenizer, template)
    return template


def _check_template(tokenizer: Any, template: PairTemplate) -> None:
    """Re-encode every probe (of other lengths) and insist the template reproduces it exactly."""
    for first, second in PROBES:
        a = tokenizer(first, add_special_tokens=False)["input_ids"]
        b = tokenizer(second, add_special_tokens=False)["input_ids"]
        if template.assemble(a, b) != _encode_pair(tokenizer, first, second):
            raise ValueError(
                f"the pair template probed from {type(tokenizer).__name__} does not reproduce "
                f"its encoding of ({first!r}, {second!r})"
            )


@dataclass(frozen=True, slots=True)
class PairLayout:
    """A model's pair template and ``max_length``: a pair's cost and its token ids."""

    template: PairTemplate
    max_length: int

    def premise_room(self, hypothesis_len: int) -> int:
        """Premise tokens that fit beside a hypothesis of this length (only_first truncation)."""
        return self.max_length - self.template.num_special_tokens - hypothesis_len

    def pair(self, premise_ids: Sequence[int], hypothesis_ids: Sequence[int]) -> PairTokens:
        """A pair and its assembled length (the batcher's cost), after only_first truncation.

        Raises ValueError where the tokenizer itself would fail: when the hypothesis leaves no
        room for a single premise token and the premise must be cut.
        """
        premise, hypothesis = tuple(premise_ids), tuple(hypothesis_ids)
        room = self.premise_room(len(hypothesis))
        if len(premise) > room:
            self.check_hypothesis(hypothesis)
        length = self.template.num_special_tokens + min(len(premise), room) + len(hypothesis)
        return PairTokens(premise, hypothesis, length)

    def check_hypothesis(self, hypothesis_ids: Sequence[int]) -> None:
        """Raise ValueError when a hypothesis leaves no room for one premise token: a pair
        with it cannot be encoded whatever its premise (checked before the premise is read)."""
        if self.premise_room(len(hypothesis_ids)) < 1:
            raise ValueError(
                f"hypothesis of {len(hypothesis_ids)} tokens leaves no room for the premise within "
                f"max_length {self.max_length} ({self.template.num_special_tokens} special tokens)"
            )

    def assemble(self, pair: PairTokens) -> tuple[list[int], list[int]]:
        """(input_ids, token_type_ids), exactly as the tokenizer encodes the pair with
        ``truncation="only_first", max_length=self.max_length``: the premise is cut from the right."""
        return self.template.assemble(pair.premise_ids[: self.premise_room(len(pair.hypothesis_ids))], pair.hypothesis_ids)

    def flat_ids(self, pairs: Sequence[PairTokens]) -> list[int]:
        """Every pair's ids as ``assemble`` lays them out, one pair after another. Collation
        holds the GIL, so this is a plain loop of ``extend``s: a generator of segments took
        twice as long."""
        template = self.template
        prefix, middle, suffix = template.prefix_ids, template.middle_ids, template.suffix_ids
        room = self.premise_room(0)  # a premise's room beside a hypothesis of h tokens: room - h
        ids: list[int] = []
        extend = ids.extend
        for premise, hypothesis, _ in pairs:
            extend(prefix)
            extend(premise if len(premise) + len(hypothesis) <= room else premise[: room - len(hypothesis)])
            extend(middle)
            extend(hypothesis)
            extend(suffix)
        return ids

    def flat_types(self, pairs: Sequence[PairTokens]) -> list[int]:
        """Every pair's token types, matching ``flat_ids``."""
        template = self.template
        prefix, middle, suffix = template.prefix_types, template.middle_types, template.suffix_types
        first, second = [template.first_type], [template.second_type]
        room = self.premise_room(0)  # a premise's room beside a hypothesis of h tokens: room - h
        types: list[int] = []
        extend = types.extend
        for premise, hypothesis, _ in pairs:
            extend(prefix)
            extend(first * min(len(premise), room - len(hypothesis)))
            extend(middle)
            extend(second * len(hypothesis))
            extend(suffix)
        return types
