"""Size limits for job inputs.

The limits are part of the decoded types (msgspec ``Meta`` constraints), so an oversized job is
refused while it is decoded, before it is tokenized or queued. Settings pass their own
``Limits``; ``build_job_schema`` builds (and caches) the job types for each distinct value.
"""

from __future__ import annotations

import msgspec


class Limits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How large one job may be. Frozen and hashable: it is the cache key of its schema."""

    max_text_chars: int = 2000
    """Headlines, zero-shot texts, NLI premises and hypotheses."""
    max_label_chars: int = 200
    """Zero-shot labels and the hypothesis template."""
    max_company_chars: int = 200
    max_labels: int = 32
    max_pairs_per_job: int = 256
    """NLI pairs in one ``nli`` job."""
    max_headlines_per_job: int = 128
    """Headlines in one ``classify_batch`` or ``company_relevance_batch`` job."""
    max_texts_per_job: int = 128
    """Texts in one ``zero_shot`` job."""
    max_tickers: int = 32
    max_ticker_chars: int = 10

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
