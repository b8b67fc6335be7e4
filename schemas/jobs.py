"""Job inputs: one frozen Struct per operation, a tagged union on the field ``operation``.

These classes carry the field *types* and the checks that need no limits (exactly one of
``text``/``texts``, unique labels, a usable template). ``schemas.decoding`` subclasses each one
with the size limits of a ``Limits`` value, so ``isinstance(op, ClassifyJob)`` and ``match``
hold for whatever limits decoded ``op``. Build inputs for decoding through a ``JobSchema``;
constructing these classes directly checks the cross-field rules but no sizes.
"""

from __future__ import annotations

import string
from typing import Final

import msgspec

DEFAULT_TEMPLATE: Final = "This example is {}."
"""The transformers zero-shot pipeline's default hypothesis template."""


class Job(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="operation"
):
    """Base of every job input; the subclass's tag is the job's ``operation``."""


class NliJob(Job, tag="nli"):
    """Raw NLI: the label probabilities of each (premise, hypothesis) pair."""

    pairs: list[tuple[str, str]]


class ZeroShotJob(Job, tag="zero_shot"):
    """The transformers ``zero-shot-classification`` pipeline over one text or several."""

    labels: list[str]
    text: str | None = None
    texts: list[str] | None = None
    template: str = DEFAULT_TEMPLATE
    """Applied with ``template.format(label)``, as the pipeline does."""
    multi_label: bool = False

    def __post_init__(self) -> None:
        if (self.text is None) == (self.texts is None):
            got = "neither" if self.text is None else "both"
            raise ValueError(f"text: exactly one of text or texts must be given, got {got}")
        first_index: dict[str, int] = {}
        for index, label in enumerate(self.labels):
            if label in first_index:
                first = first_index[label]
                raise ValueError(
                    f"labels[{index}]: duplicate label {label!r} (same as labels[{first}])"
                )
            first_index[label] = index
        if not _has_one_placeholder(self.template):
            raise ValueError(
                'template: must contain "{}" exactly once (write literal braces as "{{" and "}}")'
            )

    @property
    def sequences(self) -> list[str]:
        """The texts to classify, whichever of ``text`` and ``texts`` was given."""
        return [self.text] if self.text is not None else list(self.texts or ())


class ClassifyJob(Job, tag="classify"):
    """Opinion/news and temporal category of one headline; relevance too when a company is given."""

    headline: str
    company: str | None = None


class ClassifyBatchJob(Job, tag="classify_batch"):
    """``classify`` over many headlines, with one optional company for all of them."""

    headlines: list[str]
    company: str | None = None


class CompanyRelevanceJob(Job, tag="company_relevance"):
    """Whether one headline is about a company."""

    headline: str
    company: str


class CompanyRelevanceBatchJob(Job, tag="company_relevance_batch"):
    """``company_relevance`` over many headlines and one company."""

    headlines: list[str]
    company: str


class RoutineOperationsJob(Job, tag="routine_operations"):
    """The core classification plus, per ticker, whether the news is routine business."""

    headline: str
    ticker_symbols: list[str]


class QuantitativeCatalystJob(Job, tag="detect_quantitative_catalyst"):
    """Dividend, acquisition, buyback, earnings or guidance news with its figures."""

    headline: str


class StrategicCatalystJob(Job, tag="detect_strategic_catalyst"):
    """Strategic news (executive changes, partnerships, launches, ...) and its subtype."""

    headline: str


Operation = (
    NliJob
    | ZeroShotJob
    | ClassifyJob
    | ClassifyBatchJob
    | CompanyRelevanceJob
    | CompanyRelevanceBatchJob
    | RoutineOperationsJob
    | QuantitativeCatalystJob
    | StrategicCatalystJob
)
"""Any decoded job input."""

JOB_TYPES: Final[tuple[type[Job], ...]] = (
    NliJob,
    ZeroShotJob,
    ClassifyJob,
    ClassifyBatchJob,
    CompanyRelevanceJob,
    CompanyRelevanceBatchJob,
    RoutineOperationsJob,
    QuantitativeCatalystJob,
    StrategicCatalystJob,
)


def operation_name(op: Job | type[Job]) -> str:
    """The ``operation`` tag of a job input (or of its class)."""
    cls = op if isinstance(op, type) else type(op)
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str), f"{cls.__name__} has no operation tag"
    return tag


OPERATIONS: Final[tuple[str, ...]] = tuple(operation_name(cls) for cls in JOB_TYPES)
"""The nine operation names, in the order of ``JOB_TYPES``."""


def _has_one_placeholder(template: str) -> bool:
    """True when ``template.format(label)`` fills exactly one bare ``{}`` and nothing else."""
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError:  # an unmatched "{" or "}"
        return False
    return fields == [("", "", None)]
