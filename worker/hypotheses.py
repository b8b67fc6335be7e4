"""The headline service's hypotheses and decision thresholds, as data in one place.

Wording changes scores, so every hypothesis lives here and nowhere else: tuning the service means
editing this module (or the ``*_THRESHOLD`` variables), never the operations that use it. Names
(the dictionary keys) are what results are keyed by.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Annotated, Final

import msgspec

OPINION: Final = "This is an opinion piece or editorial."
STRAIGHT_NEWS: Final = "This is a factual news report."

TEMPORAL: Final = MappingProxyType({
    "past_event": "This describes an event that has already happened.",
    "future_event": "This describes a future event or plan.",
    "general_topic": "This discusses a general topic or trend.",
})
"""Keys match ``schemas.TEMPORAL_CATEGORIES``; one is chosen by a softmax over the three."""

COMPANY: Final = "This text is about {company}."
ROUTINE: Final = "This is a routine business operations update from {ticker}."

QUANTITATIVE_CATALYSTS: Final = MappingProxyType({
    "dividend": "This is about a dividend payment or declaration.",
    "acquisition": "This is about a company acquiring another company.",
    "buyback": "This is about a share buyback or stock repurchase.",
    "earnings": "This is about quarterly earnings or financial results.",
    "guidance": "This is about financial guidance or a revenue forecast.",
})
"""Keys match ``schemas.CATALYST_TYPES``."""

STRATEGIC_CATALYSTS: Final = MappingProxyType({
    "executive_change": "This is about an executive joining or leaving the company.",
    "merger_agreement": "This is about a merger agreement between companies.",
    "partnership": "This is about a strategic partnership or collaboration.",
    "product_launch": "This is about the launch of a new product.",
    "clinical_trial": "This is about the results of a clinical trial.",
    "regulatory_approval": "This is about a regulatory approval.",
})

Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class Thresholds(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Decision thresholds: a flag is true when its probability is at least the threshold.

    Each field is read from ``<FIELD>_THRESHOLD`` (``OPINION_THRESHOLD``, ...).
    """

    opinion: Probability = 0.5
    """``p(opinion)`` of the two-way softmax opinion vs straight news."""
    company: Probability = 0.5
    """Entailment vs contradiction of "This text is about {company}."."""
    routine: Probability = 0.5
    """Entailment vs contradiction of the routine-operations hypothesis, per ticker."""
    quantitative_catalyst: Probability = 0.5
    """The best catalyst type's entailment vs contradiction (a figure must be present too)."""
    strategic_catalyst: Probability = 0.5
    """The best strategic subtype's entailment vs contradiction."""

    def __post_init__(self) -> None:
        # msgspec checks the Meta bounds only while decoding; direct construction lands here.
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not math.isnan(value) and 0.0 <= value <= 1.0):
                raise ValueError(
                    f"{name.upper()}_THRESHOLD: must be a probability in [0, 1], got {value!r}"
                )
