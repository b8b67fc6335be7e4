"""Hypothesis strategies for job inputs, shared by the schema and the HTTP fuzz tests.

Near-valid inputs (a real or random operation with random values under real field names) reach
the per-field checks, not just the tag lookup; ``colour`` stands for a field no job has.
"""

from __future__ import annotations

from hypothesis import strategies as st

from schemas import JOB_TYPES, OPERATIONS

FIELD_NAMES = sorted({"operation", "colour"} | {field for cls in JOB_TYPES for field in cls.__struct_fields__})
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), children, max_size=5),
    max_leaves=20,
)
job_like = st.fixed_dictionaries(
    {"operation": st.sampled_from(OPERATIONS) | st.text(max_size=8)},
    optional={name: json_values for name in FIELD_NAMES if name != "operation"},
)
