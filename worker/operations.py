"""Operations: a decoded job input becomes a plan, its pairs and the way back from their logits.

A plan holds *every* (premise, hypothesis) pair of a job, so the service makes one
``engine.enqueue`` call per job and the job's pairs enter the shared queue together. The aggregator
maps the logits rows back to the operation's typed result, always keyed by label or hypothesis
name. Plans compose: ``classify_batch`` is many ``classify`` plans joined, ``routine_operations``
is a ``classify`` plan joined with one plan per ticker.

Scoring follows the transformers zero-shot pipeline: "multi-label style" is a softmax over
(contradiction, entailment) logits of one pair; "single-label style" is a softmax over the
entailment logits of competing hypotheses.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from schemas import (
    ClassifyBatchJob,
    ClassifyBatchResult,
    ClassifyJob,
    ClassifyResult,
    CompanyRelevanceBatchJob,
    CompanyRelevanceBatchResult,
    CompanyRelevanceJob,
    CompanyRelevanceResult,
    Job,
    NliJob,
    NliResult,
    PairScores,
    QuantitativeCatalystJob,
    QuantitativeCatalystResult,
    RoutineOperationScore,
    RoutineOperationsJob,
    RoutineOperationsResult,
    StrategicCatalystJob,
    StrategicCatalystResult,
    ZeroShotJob,
    ZeroShotResult,
    ZeroShotScores,
)
from worker import hypotheses as H
from worker.hypotheses import Thresholds

T = TypeVar("T")
U = TypeVar("U")
Pair = tuple[str, str]

# --- catalyst figures ------------------------------------------------------------------------

CATALYST_VALUE = re.compile(
    r"""
    \$\d[\d,]*(?:\.\d+)?                                   # $1, $0.25, $1,000, $37.50
    (?:[KMBT]\b|\s?(?:thousand|million|billion|trillion)\b)?  # $3.5B, $75M, $2 billion
    (?:\s?/\s?share\b|\s+per\s+share\b)?                   # $37.50/Share, $1 Per Share
    |
    (?<![\w.])\d+(?:\.\d+)?%                               # 10%, 2.5%
    """,
    re.IGNORECASE | re.VERBOSE,
)
"""Dollar amounts (with an optional K/M/B/T or word scale and a per-share suffix) and percentages.

Figures come back as written in the headline, in order, each once: "Sompo To Acquire Aspen For
$3.5B, Or $37.50/Share" gives ``["$3.5B", "$37.50/Share"]``; "Sees $18B-$22B" gives
``["$18B", "$22B"]``. Bare numbers (years, quarters, counts) are not figures.
"""


def extract_catalyst_values(text: str) -> list[str]:
    """The figures in ``text`` (see ``CATALYST_VALUE``), in order of appearance, without repeats."""
    return list(dict.fromkeys(match.group(0) for match in CATALYST_VALUE.finditer(text)))


# --- scoring helpers -----------------------------------------------------------------------------


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64 (scores leave as Python floats anyway)."""
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def _softmax_floats(values: Sequence[float]) -> list[float]:
    """``softmax`` of a few Python floats, without numpy's per-call cost."""
    top = max(values)
    exps = [math.exp(value - top) for value in values]
    total = sum(exps)
    return [value / total for value in exps]


Rows = np.ndarray | Sequence[Sequence[float]]
"""Logit rows ``[n, num_labels]``: a job's array, or its rows as lists of Python floats."""


def _float_rows(rows: Rows) -> Sequence[Sequence[float]]:
    return rows.tolist() if isinstance(rows, np.ndarray) else rows


class NliHead(Protocol):
    """What scoring needs to know of the model (``NliModel`` has it)."""

    labels: tuple[str, ...]
    entailment_index: int
    contradiction_index: int


@dataclass(frozen=True, slots=True)
class Scoring:
    """The model's label layout plus the service's thresholds: everything aggregators read."""

    labels: tuple[str, ...]
    entailment: int
    contradiction: int
    thresholds: Thresholds

    @classmethod
    def of(cls, head: NliHead, thresholds: Thresholds) -> Scoring:
        return cls(tuple(head.labels), head.entailment_index, head.contradiction_index, thresholds)

    def entailed(self, rows: Rows) -> list[float]:
        """Multi-label style: per row, softmax over (contradiction, entailment) → p(entailment).

        A job's rows are a handful of floats: plain Python scores them several times faster
        than numpy's per-call overhead allows (the same float64 arithmetic as ``softmax``).
        """
        c, e = self.contradiction, self.entailment
        return [_softmax_floats((row[c], row[e]))[1] for row in _float_rows(rows)]

    def entailed_by_name(self, rows: Mapping[str, Sequence[float]]) -> dict[str, float]:
        """``entailed`` for named hypotheses, each scored on its own, keyed by name."""
        return _by_name(list(rows), self.entailed(list(rows.values())))

    def competing(self, rows: Rows) -> list[float]:
        """Single-label style: softmax over the rows' entailment logits (rows compete)."""
        return _softmax_floats([row[self.entailment] for row in _float_rows(rows)])


# --- plans ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan(Generic[T]):
    """A job's pairs and the function from their logits ``[len(pairs), num_labels]`` to a result."""

    pairs: tuple[Pair, ...]
    aggregate: Callable[[np.ndarray], T]

    def then(self, build: Callable[[T], U]) -> Plan[U]:
        aggregate = self.aggregate
        return Plan(self.pairs, lambda logits: build(aggregate(logits)))


def join(parts: Sequence[Plan[Any]], build: Callable[[list[Any]], T]) -> Plan[T]:
    """One plan from several: pairs concatenated, each part aggregating its own slice of rows."""
    bounds = np.cumsum([0, *(len(part.pairs) for part in parts)]).tolist()

    def aggregate(logits: np.ndarray) -> T:
        return build([part.aggregate(logits[a:b]) for part, a, b in zip(parts, bounds, bounds[1:])])

    return Plan(tuple(pair for part in parts for pair in part.pairs), aggregate)


def ask(premise: str, named: Mapping[str, str]) -> Plan[dict[str, list[float]]]:
    """Pairs (premise, hypothesis) for named hypotheses; aggregates to ``{name: logits row}``,
    each row a list of Python floats (the aggregators score them without numpy)."""
    names = list(named)
    return Plan(
        tuple((premise, named[name]) for name in names),
        lambda logits: dict(zip(names, np.asarray(logits).tolist())),
    )


def plan_job(op: Job, head: NliHead, thresholds: Thresholds = Thresholds()) -> Plan[Any]:
    """The plan of any decoded job input."""
    return _plan(op, Scoring.of(head, thresholds))


@functools.singledispatch
def _plan(op: Job, scoring: Scoring) -> Plan[Any]:
    raise TypeError(f"no plan for operation {type(op).__name__}")


@_plan.register
def _nli(op: NliJob, scoring: Scoring) -> Plan[NliResult]:
    def aggregate(logits: np.ndarray) -> NliResult:
        probs = softmax(logits)
        return NliResult([PairScores(_by_name(scoring.labels, row)) for row in probs])

    return Plan(tuple(tuple(pair) for pair in op.pairs), aggregate)  # type: ignore[misc]


@_plan.register
def _zero_shot(op: ZeroShotJob, scoring: Scoring) -> Plan[ZeroShotResult]:
    """The transformers ``ZeroShotClassificationPipeline``, text by text, in one plan."""
    labels = list(op.labels)
    hypotheses = [op.template.format(label) for label in labels]
    independent = op.multi_label or len(labels) == 1

    def one_text(text: str) -> Plan[ZeroShotScores]:
        def aggregate(logits: np.ndarray) -> ZeroShotScores:
            scores = np.array(scoring.entailed(logits) if independent else scoring.competing(logits))
            order = list(reversed(scores.argsort()))  # the pipeline's own ordering, ties included
            return ZeroShotScores(
                sequence=text,
                labels=[labels[i] for i in order],
                scores=[float(scores[i]) for i in order],
                scores_by_label=_by_name(labels, scores),
            )

        return Plan(tuple((text, h) for h in hypotheses), aggregate)

    return join([one_text(text) for text in op.sequences], ZeroShotResult)


def _classify(headline: str, company: str | None, scoring: Scoring) -> Plan[ClassifyResult]:
    named = {"opinion": H.OPINION, "straight_news": H.STRAIGHT_NEWS, **H.TEMPORAL}
    if company is not None:
        named["company"] = H.COMPANY.format(company=company)

    def build(rows: dict[str, list[float]]) -> ClassifyResult:
        p_opinion, p_news = scoring.competing([rows["opinion"], rows["straight_news"]])
        temporal = _by_name(list(H.TEMPORAL), scoring.competing([rows[n] for n in H.TEMPORAL]))
        is_opinion = p_opinion >= scoring.thresholds.opinion
        scores = {"opinion": p_opinion, "straight_news": p_news, **temporal}
        company_fields: dict[str, Any] = {}
        if company is not None:
            company_score = scores["company"] = scoring.entailed([rows["company"]])[0]
            company_fields = {
                "company_score": company_score,
                "is_about_company": company_score >= scoring.thresholds.company,
            }
        return ClassifyResult(
            headline=headline,
            is_opinion=is_opinion,
            is_straight_news=not is_opinion,
            temporal_category=max(temporal, key=temporal.__getitem__),  # type: ignore[arg-type]
            scores=scores,
            **company_fields,
        )

    return ask(headline, named).then(build)


@_plan.register
def _classify_one(op: ClassifyJob, scoring: Scoring) -> Plan[ClassifyResult]:
    return _classify(op.headline, op.company, scoring)


@_plan.register
def _classify_batch(op: ClassifyBatchJob, scoring: Scoring) -> Plan[ClassifyBatchResult]:
    return join([_classify(h, op.company, scoring) for h in op.headlines], ClassifyBatchResult)


def _relevance(headline: str, company: str, scoring: Scoring) -> Plan[CompanyRelevanceResult]:
    def build(rows: dict[str, list[float]]) -> CompanyRelevanceResult:
        score = scoring.entailed([rows["company"]])[0]
        return CompanyRelevanceResult(
            headline=headline,
            company=company,
            is_about_company=score >= scoring.thresholds.company,
            company_score=score,
        )

    return ask(headline, {"company": H.COMPANY.format(company=company)}).then(build)


@_plan.register
def _company_relevance(op: CompanyRelevanceJob, scoring: Scoring) -> Plan[CompanyRelevanceResult]:
    return _relevance(op.headline, op.company, scoring)


@_plan.register
def _company_relevance_batch(
    op: CompanyRelevanceBatchJob, scoring: Scoring
) -> Plan[CompanyRelevanceBatchResult]:
    return join([_relevance(h, op.company, scoring) for h in op.headlines], CompanyRelevanceBatchResult)


@_plan.register
def _routine_operations(op: RoutineOperationsJob, scoring: Scoring) -> Plan[RoutineOperationsResult]:
    tickers = list(dict.fromkeys(op.ticker_symbols))  # a repeated ticker is asked once

    def build(parts: list[Any]) -> RoutineOperationsResult:
        core, rows = parts
        by_ticker = {
            ticker: RoutineOperationScore(is_routine=score >= scoring.thresholds.routine, score=score)
            for ticker, score in scoring.entailed_by_name(rows).items()
        }
        return RoutineOperationsResult(
            headline=op.headline, core_classification=core, routine_operations_by_ticker=by_ticker
        )

    per_ticker = ask(op.headline, {t: H.ROUTINE.format(ticker=t) for t in tickers})
    return join([_classify(op.headline, None, scoring), per_ticker], build)


def _best(scores: dict[str, float]) -> tuple[str, float]:
    name = max(scores, key=scores.__getitem__)
    return name, scores[name]


@_plan.register
def _quantitative(op: QuantitativeCatalystJob, scoring: Scoring) -> Plan[QuantitativeCatalystResult]:
    values = extract_catalyst_values(op.headline)

    def build(rows: dict[str, list[float]]) -> QuantitativeCatalystResult:
        scores = scoring.entailed_by_name(rows)
        best, confidence = _best(scores)
        found = confidence >= scoring.thresholds.quantitative_catalyst and bool(values)
        return QuantitativeCatalystResult(
            headline=op.headline,
            has_quantitative_catalyst=found,
            catalyst_type=best if found else None,  # type: ignore[arg-type]
            catalyst_values=values,
            confidence=confidence,
            scores=scores,
        )

    return ask(op.headline, H.QUANTITATIVE_CATALYSTS).then(build)


@_plan.register
def _strategic(op: StrategicCatalystJob, scoring: Scoring) -> Plan[StrategicCatalystResult]:
    def build(rows: dict[str, list[float]]) -> StrategicCatalystResult:
        scores = scoring.entailed_by_name(rows)
        best, confidence = _best(scores)
        found = confidence >= scoring.thresholds.strategic_catalyst
        return StrategicCatalystResult(
            headline=op.headline,
            has_strategic_catalyst=found,
            catalyst_subtype=best if found else None,
            confidence=confidence,
            scores=scores,
        )

    return ask(op.headline, H.STRATEGIC_CATALYSTS).then(build)


def _by_name(names: Sequence[str], values: Sequence[float] | np.ndarray) -> dict[str, float]:
    return {name: float(value) for name, value in zip(names, values)}
