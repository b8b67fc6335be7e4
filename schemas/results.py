"""Job outputs: one typed Struct per operation, encoded with ``msgspec.to_builtins``.

Scores are always keyed by label name, never by position. Field names follow the headline
service's API, so its callers keep working.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

import msgspec

TemporalCategory = Literal["past_event", "future_event", "general_topic"]
TEMPORAL_CATEGORIES: Final[tuple[str, ...]] = get_args(TemporalCategory)

CatalystType = Literal["dividend", "acquisition", "buyback", "earnings", "guidance"]
CATALYST_TYPES: Final[tuple[str, ...]] = get_args(CatalystType)


class _Result(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every result: immutable once the operation has built it."""


class PairScores(_Result):
    """The probability of every model label (e.g. entailment, neutral, contradiction)."""

    scores: dict[str, float]


class NliResult(_Result):
    results: list[PairScores]
    """One per input pair, in input order."""


class ZeroShotScores(_Result):
    """The transformers pipeline's output for one text, plus the scores keyed by label."""

    sequence: str
    labels: list[str]
    """Sorted by score, highest first, as the pipeline returns them."""
    scores: list[float]
    """Aligned with ``labels``."""
    scores_by_label: dict[str, float]


class ZeroShotResult(_Result):
    results: list[ZeroShotScores]
    """One per input text (a single ``text`` gives one), in input order."""


class ClassifyResult(_Result, omit_defaults=True):
    """Opinion/news and temporal category; the company fields appear only when one was given."""

    headline: str
    is_opinion: bool
    is_straight_news: bool
    temporal_category: TemporalCategory
    scores: dict[str, float]
    is_about_company: bool | None = None
    company_score: float | None = None


class ClassifyBatchResult(_Result):
    results: list[ClassifyResult]


class CompanyRelevanceResult(_Result):
    headline: str
    company: str
    is_about_company: bool
    company_score: float


class CompanyRelevanceBatchResult(_Result):
    results: list[CompanyRelevanceResult]


class RoutineOperationScore(_Result):
    is_routine: bool
    score: float


class RoutineOperationsResult(_Result):
    headline: str
    core_classification: ClassifyResult
    routine_operations_by_ticker: dict[str, RoutineOperationScore]


class QuantitativeCatalystResult(_Result):
    headline: str
    has_quantitative_catalyst: bool
    catalyst_type: CatalystType | None
    catalyst_values: list[str]
    """The figures found in the headline, e.g. ``["$0.25"]``."""
    confidence: float
    scores: dict[str, float]


class StrategicCatalystResult(_Result):
    headline: str
    has_strategic_catalyst: bool
    catalyst_subtype: str | None
    confidence: float
    scores: dict[str, float]


Result = (
    NliResult
    | ZeroShotResult
    | ClassifyResult
    | ClassifyBatchResult
    | CompanyRelevanceResult
    | CompanyRelevanceBatchResult
    | RoutineOperationsResult
    | QuantitativeCatalystResult
    | StrategicCatalystResult
)
"""Any operation's result."""
