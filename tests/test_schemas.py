"""Job input decoding, its error messages, limits, and result encoding."""

from __future__ import annotations

import json
from typing import Annotated, Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batching.errors import InvalidInput
from job_strategies import job_like, json_values
from schemas import (
    DEFAULT_SCHEMA,
    JOB_TYPES,
    OPERATIONS,
    ClassifyBatchJob,
    ClassifyJob,
    ClassifyResult,
    CompanyRelevanceBatchJob,
    CompanyRelevanceBatchResult,
    CompanyRelevanceJob,
    CompanyRelevanceResult,
    Limits,
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
    build_job_schema,
    explain_validation_error,
    operation_name,
)
from schemas.decoding import NON_BLANK_PATTERN

HEADLINE = "Apple Declares $0.25 Dividend"
EXPECTED_OPERATIONS = (
    "expected one of classify, classify_batch, company_relevance, company_relevance_batch, "
    "detect_quantitative_catalyst, detect_strategic_catalyst, nli, routine_operations, zero_shot"
)

VALID_INPUTS: dict[str, tuple[dict[str, Any], type, dict[str, Any]]] = {
    "nli": (
        {"operation": "nli", "pairs": [[HEADLINE, "This is about a dividend."]]},
        NliJob,
        {"pairs": [(HEADLINE, "This is about a dividend.")]},
    ),
    "zero_shot": (
        {"operation": "zero_shot", "text": HEADLINE, "labels": ["dividend", "merger"]},
        ZeroShotJob,
        {
            "text": HEADLINE,
            "texts": None,
            "labels": ["dividend", "merger"],
            "template": "This example is {}.",
            "multi_label": False,
        },
    ),
    "classify": (
        {"operation": "classify", "headline": HEADLINE, "company": "Apple"},
        ClassifyJob,
        {"headline": HEADLINE, "company": "Apple"},
    ),
    "classify_batch": (
        {"operation": "classify_batch", "headlines": [HEADLINE, "Fed holds rates"]},
        ClassifyBatchJob,
        {"headlines": [HEADLINE, "Fed holds rates"], "company": None},
    ),
    "company_relevance": (
        {"operation": "company_relevance", "headline": HEADLINE, "company": "Apple"},
        CompanyRelevanceJob,
        {"headline": HEADLINE, "company": "Apple"},
    ),
    "company_relevance_batch": (
        {"operation": "company_relevance_batch", "headlines": [HEADLINE], "company": "Apple"},
        CompanyRelevanceBatchJob,
        {"headlines": [HEADLINE], "company": "Apple"},
    ),
    "routine_operations": (
        {"operation": "routine_operations", "headline": HEADLINE, "ticker_symbols": ["AAPL", "BRK.B"]},
        RoutineOperationsJob,
        {"headline": HEADLINE, "ticker_symbols": ["AAPL", "BRK.B"]},
    ),
    "detect_quantitative_catalyst": (
        {"operation": "detect_quantitative_catalyst", "headline": HEADLINE},
        QuantitativeCatalystJob,
        {"headline": HEADLINE},
    ),
    "detect_strategic_catalyst": (
        {"operation": "detect_strategic_catalyst", "headline": "Acme Names Jane Doe CEO"},
        StrategicCatalystJob,
        {"headline": "Acme Names Jane Doe CEO"},
    ),
}


def decode_error(obj: object, schema: Any = DEFAULT_SCHEMA) -> str:
    with pytest.raises(InvalidInput) as info:
        schema.decode_input(obj)
    assert str(info.value) == f"invalid_input: {info.value.message}"
    return info.value.message


def decode_json_error(data: bytes, schema: Any = DEFAULT_SCHEMA) -> str:
    with pytest.raises(InvalidInput) as info:
        schema.decode_json(data)
    return info.value.message


# --- the operations -------------------------------------------------------------------------


def test_operations_are_the_nine_tags() -> None:
    assert OPERATIONS == tuple(VALID_INPUTS)
    assert set(DEFAULT_SCHEMA.job_types) == set(OPERATIONS)
    assert [operation_name(cls) for cls in JOB_TYPES] == list(OPERATIONS)


@pytest.mark.parametrize("name", list(VALID_INPUTS))
def test_every_operation_decodes_from_a_dict(name: str) -> None:
    obj, base, fields = VALID_INPUTS[name]
    op = DEFAULT_SCHEMA.decode_input(obj)
    assert isinstance(op, base)
    assert operation_name(op) == name
    assert {field: getattr(op, field) for field in fields} == fields


@pytest.mark.parametrize("name", list(VALID_INPUTS))
def test_every_operation_decodes_from_json(name: str) -> None:
    obj, base, _ = VALID_INPUTS[name]
    op = DEFAULT_SCHEMA.decode_json(json.dumps(obj).encode())
    assert isinstance(op, base)
    assert op == DEFAULT_SCHEMA.decode_input(obj)


def test_decode_json_accepts_str_too() -> None:
    obj = VALID_INPUTS["classify"][0]
    assert DEFAULT_SCHEMA.decode_json(json.dumps(obj)) == DEFAULT_SCHEMA.decode_input(obj)


def test_job_inputs_are_frozen() -> None:
    op = DEFAULT_SCHEMA.decode_input(VALID_INPUTS["classify"][0])
    with pytest.raises(AttributeError):
        op.headline = "changed"  # type: ignore[misc]


def test_zero_shot_defaults_and_sequences() -> None:
    op = DEFAULT_SCHEMA.decode_input({"operation": "zero_shot", "texts": ["a", "b"], "labels": ["x"]})
    assert isinstance(op, ZeroShotJob)
    assert op.sequences == ["a", "b"]
    assert op.template == "This example is {}."
    assert op.multi_label is False
    single = DEFAULT_SCHEMA.decode_input({"operation": "zero_shot", "text": "a", "labels": ["x"]})
    assert isinstance(single, ZeroShotJob)
    assert single.sequences == ["a"]


@pytest.mark.parametrize(
    "template", ["{} happened.", "Topic: {}", "Braces {{kept}} around {}"]
)
def test_zero_shot_accepts_templates_with_one_placeholder(template: str) -> None:
    op = DEFAULT_SCHEMA.decode_input(
        {"operation": "zero_shot", "text": "a", "labels": ["x"], "template": template}
    )
    assert isinstance(op, ZeroShotJob)
    assert op.template.format("LABEL").count("LABEL") == 1


def test_classify_company_is_optional() -> None:
    op = DEFAULT_SCHEMA.decode_input({"operation": "classify", "headline": HEADLINE})
    assert isinstance(op, ClassifyJob)
    assert op.company is None


def test_operation_name_of_a_class_and_an_instance() -> None:
    assert operation_name(ClassifyJob) == "classify"
    assert operation_name(DEFAULT_SCHEMA.job_types["nli"]) == "nli"
    assert operation_name(ClassifyJob(headline="x")) == "classify"


# --- malformed input: one exact message each --------------------------------------------------

ZS = {"operation": "zero_shot", "labels": ["a", "b"]}
ERROR_CASES: list[tuple[object, str]] = [
    (None, "input: missing"),
    ([], "input: expected an object, got array"),
    ([{"operation": "classify"}], "input: expected an object, got array"),
    ("classify", "input: expected an object, got str"),
    (3, "input: expected an object, got int"),
    ({}, f"operation: missing required field; {EXPECTED_OPERATIONS}"),
    ({"headline": HEADLINE}, f"operation: missing required field; {EXPECTED_OPERATIONS}"),
    ({"operation": "foo"}, f"operation: unknown operation 'foo'; {EXPECTED_OPERATIONS}"),
    ({"operation": ""}, f"operation: unknown operation ''; {EXPECTED_OPERATIONS}"),
    ({"operation": "classify"}, "headline: missing required field"),
    ({"operation": "classify", "headline": HEADLINE, "colour": "red"}, "colour: unknown field"),
    ({"operation": "classify", "headline": 1}, "headline: expected str, got int"),
    ({"operation": "classify", "headline": None}, "headline: expected str, got null"),
    ({"operation": "classify", "headline": ["a"]}, "headline: expected str, got array"),
    ({"operation": "classify", "headline": {"a": 1}}, "headline: expected str, got object"),
    ({"operation": "classify", "headline": ""}, "headline: must not be blank"),
    ({"operation": "classify", "headline": " \t\n"}, "headline: must not be blank"),
    ({"operation": "classify", "headline": "\u0001\u0002"}, "headline: must not be blank"),
    ({"operation": "classify", "headline": "\u200b\ufeff\u2060"}, "headline: must not be blank"),
    ({"operation": "classify", "headline": "\u200e\u00ad\x85"}, "headline: must not be blank"),
    ({"operation": "classify", "headline": "x" * 2001}, "headline: expected at most 2000 characters"),
    ({"operation": "classify", "headline": HEADLINE, "company": 3}, "company: expected str or null, got int"),
    ({"operation": "classify", "headline": HEADLINE, "company": " "}, "company: must not be blank"),
    (
        {"operation": "classify", "headline": HEADLINE, "company": "x" * 201},
        "company: expected at most 200 characters",
    ),
    ({"operation": "classify_batch", "headlines": []}, "headlines: expected at least 1 item"),
    ({"operation": "classify_batch", "headlines": "abc"}, "headlines: expected array, got str"),
    ({"operation": "classify_batch", "headlines": ["x"] * 129}, "headlines: expected at most 128 items"),
    ({"operation": "classify_batch", "headlines": ["a", "b", "c", " "]}, "headlines[3]: must not be blank"),
    ({"operation": "classify_batch", "headlines": ["a", 5]}, "headlines[1]: expected str, got int"),
    ({"operation": "company_relevance", "headline": HEADLINE}, "company: missing required field"),
    ({"operation": "company_relevance_batch", "headlines": [""], "company": "A"}, "headlines[0]: must not be blank"),
    ({"operation": "nli", "pairs": []}, "pairs: expected at least 1 item"),
    ({"operation": "nli", "pairs": [["a", "b"]] * 257}, "pairs: expected at most 256 items"),
    ({"operation": "nli", "pairs": [["a", 1]]}, "pairs[0][1]: expected str, got int"),
    ({"operation": "nli", "pairs": [["a", "b"], ["c", ""]]}, "pairs[1][1]: must not be blank"),
    ({"operation": "nli", "pairs": ["ab"]}, "pairs[0]: expected array, got str"),
    ({"operation": "routine_operations", "headline": HEADLINE, "ticker_symbols": []},
     "ticker_symbols: expected at least 1 item"),
    ({"operation": "routine_operations", "headline": HEADLINE, "ticker_symbols": ["aapl"]},
     "ticker_symbols[0]: must contain only A-Z, 0-9, '.' and '-'"),
    ({"operation": "routine_operations", "headline": HEADLINE, "ticker_symbols": ["AAPL", "ABCDEFGHIJK"]},
     "ticker_symbols[1]: expected at most 10 characters"),
    ({"operation": "routine_operations", "headline": HEADLINE, "ticker_symbols": [""]},
     "ticker_symbols[0]: expected at least 1 character"),
    ({"operation": "routine_operations", "headline": HEADLINE, "ticker_symbols": ["A"] * 33},
     "ticker_symbols: expected at most 32 items"),
    ({"operation": "detect_quantitative_catalyst"}, "headline: missing required field"),
    ({"operation": "detect_strategic_catalyst", "headline": HEADLINE, "company": "A"}, "company: unknown field"),
    ({"operation": "zero_shot", "labels": ["a"]},
     "text: exactly one of text or texts must be given, got neither"),
    ({**ZS, "text": "x", "texts": ["y"]}, "text: exactly one of text or texts must be given, got both"),
    ({**ZS, "text": "x", "labels": ["a", "b", "a"]}, "labels[2]: duplicate label 'a' (same as labels[0])"),
    ({**ZS, "text": "x", "labels": []}, "labels: expected at least 1 item"),
    ({**ZS, "text": "x", "labels": ["a", " "]}, "labels[1]: must not be blank"),
    ({**ZS, "text": "x", "labels": ["x" * 201]}, "labels[0]: expected at most 200 characters"),
    ({**ZS, "text": "x", "labels": [str(i) for i in range(33)]}, "labels: expected at most 32 items"),
    ({**ZS, "texts": []}, "texts: expected at least 1 item"),
    ({**ZS, "texts": ["a", ""]}, "texts[1]: must not be blank"),
    ({**ZS, "text": ""}, "text: must not be blank"),
    ({**ZS, "text": "x", "multi_label": 1}, "multi_label: expected bool, got int"),
]
TEMPLATE_MESSAGE = 'template: must contain "{}" exactly once (write literal braces as "{{" and "}}")'
ERROR_CASES += [
    ({**ZS, "text": "x", "template": template}, TEMPLATE_MESSAGE)
    for template in ["No placeholder.", "{} and {}", "{0} is it", "{label}", "{!r}", "{:>5}", "open { brace {}"]
]


@pytest.mark.parametrize(("obj", "message"), ERROR_CASES)
def test_bad_input_names_the_field(obj: object, message: str) -> None:
    assert decode_error(obj) == message


@pytest.mark.parametrize(("obj", "message"), ERROR_CASES)
def test_bad_json_body_names_the_field(obj: object, message: str) -> None:
    assert decode_json_error(json.dumps(obj).encode()) == message


@pytest.mark.parametrize(
    ("obj", "python_message", "json_message"),
    [
        # The JSON decoder does not say what it found where it needed the tag or a fixed-size array.
        ({"operation": 1}, f"operation: {EXPECTED_OPERATIONS}, got int", f"operation: {EXPECTED_OPERATIONS}"),
        ({"operation": None}, f"operation: {EXPECTED_OPERATIONS}, got null", f"operation: {EXPECTED_OPERATIONS}"),
        ({"operation": "nli", "pairs": [["a"]]}, "pairs[0]: expected exactly 2 items, got 1",
         "pairs[0]: expected exactly 2 items"),
        ({"operation": "nli", "pairs": [["a", "b", "c"]]}, "pairs[0]: expected exactly 2 items, got 3",
         "pairs[0]: expected exactly 2 items"),
    ],
)
def test_messages_where_the_json_decoder_says_less(obj: object, python_message: str, json_message: str) -> None:
    assert decode_error(obj) == python_message
    assert decode_json_error(json.dumps(obj).encode()) == json_message


def test_python_types_json_cannot_carry_are_named() -> None:
    assert decode_error({"operation": "classify", "headline": b"x"}) == "headline: expected str, got bytes"
    assert decode_error({"operation": "nli", "pairs": [("a", 2.5)]}) == "pairs[0][1]: expected str, got float"


def test_unknown_operation_echo_is_shortened() -> None:
    message = decode_error({"operation": "x" * 10_000})
    assert message.startswith("operation: unknown operation 'xxx")
    assert "...;" in message
    assert len(message) < 400


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"operation": "classify", "headline": "bad \ud800 text"}, "headline: must not contain unpaired surrogates"),
        ({"operation": "nli", "pairs": [["a", "b"], ["c", "\udfff"]]},
         "pairs[1][1]: must not contain unpaired surrogates"),
        ({"operation": "zero_shot", "text": "x", "labels": ["ok", "\ud83d"]},
         "labels[1]: must not contain unpaired surrogates"),
    ],
)
def test_unpaired_surrogates_are_refused(obj: object, message: str) -> None:
    # json.loads, which RunPod's SDK uses, lets lone surrogates through; tokenizers choke on them.
    assert decode_error(obj) == message


def test_astral_characters_are_fine() -> None:
    op = DEFAULT_SCHEMA.decode_input({"operation": "classify", "headline": "Rocket \U0001f680 launch"})
    assert isinstance(op, ClassifyJob)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "body: malformed JSON: the body ends before its JSON value does"),
        (b'{"operation": "classify", ', "body: malformed JSON: the body ends before its JSON value does"),
        (b"\xff", "body: malformed JSON: invalid UTF-8 at byte 0"),
        (b'{"operation": "classify", "headline": "ab\xff"}', "body: malformed JSON: invalid UTF-8 at byte 41"),
        (b'{"operation": "classify", "headline": "a"} trailing', "body: malformed JSON: trailing characters after the JSON value, at byte 43"),
        (b'{"operation": "classify", "headline": "\xc3\xa9"} x', "body: malformed JSON: trailing characters after the JSON value, at byte 44"),
        (b'{"operation": "classify", "headline": tru}', "body: malformed JSON: unexpected character at byte 38"),
        (b'{"operation": "classify", "headline": NaN}', "body: malformed JSON: NaN is not a JSON value"),
        (b'{"operation": "classify", "headline": "\\ud800"}', "body: malformed JSON: a string holds an unpaired surrogate escape (\\ud800-\\udfff alone)"),
        (b'{"x": ' + b"[" * 100_000, "body: malformed JSON: nested too deeply"),
        (b"null", "input: missing"),
        (b"[1, 2]", "input: expected an object, got array"),
    ],
)
def test_malformed_json_body(data: bytes, message: str) -> None:
    assert decode_json_error(data) == message


def test_a_deeply_nested_value_is_refused_cleanly() -> None:
    nested: list[Any] = []
    for _ in range(10_000):
        nested = [nested]
    body = json.dumps({"operation": "classify", "headline": "a", "company": "b", "extra": 1})
    assert decode_json_error(body.encode()) == "extra: unknown field"
    assert decode_error({"operation": "classify", "headline": nested}) == "headline: expected str, got array"


# --- limits ---------------------------------------------------------------------------------


def test_custom_limits_are_in_the_types() -> None:
    three = {"operation": "classify_batch", "headlines": ["a", "b", "c"]}
    assert isinstance(DEFAULT_SCHEMA.decode_input(three), ClassifyBatchJob)
    small = build_job_schema(Limits(max_headlines_per_job=2))
    assert decode_error(three, small) == "headlines: expected at most 2 items"
    assert decode_json_error(json.dumps(three).encode(), small) == "headlines: expected at most 2 items"
    assert isinstance(small.decode_input({**three, "headlines": ["a", "b"]}), ClassifyBatchJob)


@pytest.mark.parametrize(
    ("limits", "obj", "message"),
    [
        (Limits(max_text_chars=5), {"operation": "classify", "headline": "abcdef"},
         "headline: expected at most 5 characters"),
        (Limits(max_text_chars=5), {"operation": "nli", "pairs": [["abc", "abcdef"]]},
         "pairs[0][1]: expected at most 5 characters"),
        (Limits(max_label_chars=3), {**ZS, "text": "x", "labels": ["abcd"]},
         "labels[0]: expected at most 3 characters"),
        (Limits(max_label_chars=8), {**ZS, "text": "x", "template": "It is {}!!"},
         "template: expected at most 8 characters"),
        (Limits(max_company_chars=2), {"operation": "company_relevance", "headline": "h", "company": "abc"},
         "company: expected at most 2 characters"),
        (Limits(max_labels=1), {**ZS, "text": "x"}, "labels: expected at most 1 item"),
        (Limits(max_pairs_per_job=1), {"operation": "nli", "pairs": [["a", "b"], ["c", "d"]]},
         "pairs: expected at most 1 item"),
        (Limits(max_texts_per_job=1), {**ZS, "texts": ["a", "b"]}, "texts: expected at most 1 item"),
        (Limits(max_tickers=1), {"operation": "routine_operations", "headline": "h", "ticker_symbols": ["A", "B"]},
         "ticker_symbols: expected at most 1 item"),
        (Limits(max_ticker_chars=3), {"operation": "routine_operations", "headline": "h", "ticker_symbols": ["ABCD"]},
         "ticker_symbols[0]: expected at most 3 characters"),
    ],
)
def test_each_limit_applies(limits: Limits, obj: dict[str, Any], message: str) -> None:
    assert decode_error(obj, build_job_schema(limits)) == message
    DEFAULT_SCHEMA.decode_input(obj)  # the defaults accept the same input


def test_schemas_are_cached_per_limits_value() -> None:
    assert build_job_schema(Limits()) is DEFAULT_SCHEMA
    assert build_job_schema(Limits(max_labels=3)) is build_job_schema(Limits(max_labels=3))
    assert build_job_schema(Limits(max_labels=3)) is not DEFAULT_SCHEMA
    assert DEFAULT_SCHEMA.limits == Limits()


def test_jobs_of_any_limits_are_instances_of_the_public_classes() -> None:
    op = build_job_schema(Limits(max_labels=3)).decode_input({**ZS, "text": "x"})
    assert isinstance(op, ZeroShotJob)
    assert type(op) is not type(DEFAULT_SCHEMA.decode_input({**ZS, "text": "x"}))


@pytest.mark.parametrize("bad", [0, -1])
def test_limits_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="max_labels: expected a positive int"):
        Limits(max_labels=bad)


def test_limits_decode_from_settings_like_dicts() -> None:
    assert msgspec.convert({"max_labels": 4}, Limits) == Limits(max_labels=4)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"max_lables": 4}, Limits)


# --- msgspec's messages, as msgspec 0.22 prints them ------------------------------------------


class _Inner(msgspec.Struct, forbid_unknown_fields=True):
    y: int


class _Probe(msgspec.Struct, forbid_unknown_fields=True):
    s: str = ""
    opt: str | None = None
    short: Annotated[str, msgspec.Meta(max_length=3)] = ""
    nonblank: Annotated[str, msgspec.Meta(pattern=NON_BLANK_PATTERN)] = "x"
    digits: Annotated[str, msgspec.Meta(pattern=r"^\d+$")] = "1"
    items: Annotated[list[int], msgspec.Meta(min_length=1, max_length=2)] = msgspec.field(
        default_factory=lambda: [1]
    )
    pair: tuple[int, int] = (0, 0)
    counts: dict[str, int] = msgspec.field(default_factory=dict)
    small: Annotated[int, msgspec.Meta(ge=0)] = 0
    inner: _Inner | None = None


SHAPES: list[tuple[object, str, str]] = [
    ([], "Expected `object`, got `array`", "input: expected an object, got array"),
    (None, "Expected `object`, got `null`", "input: missing"),
    ({"s": 1}, "Expected `str`, got `int` - at `$.s`", "s: expected str, got int"),
    ({"opt": 1.5}, "Expected `str | null`, got `float` - at `$.opt`", "opt: expected str or null, got float"),
    ({"short": "abcd"}, "Expected `str` of length <= 3 - at `$.short`", "short: expected at most 3 characters"),
    ({"nonblank": " "}, f"Expected `str` matching regex {NON_BLANK_PATTERN!r} - at `$.nonblank`",
     "nonblank: must not be blank"),
    ({"digits": "a"}, "Expected `str` matching regex '^\\\\d+$' - at `$.digits`",
     "digits: expected str matching regex '^\\\\d+$'"),
    ({"items": []}, "Expected `array` of length >= 1 - at `$.items`", "items: expected at least 1 item"),
    ({"items": [1, 2, 3]}, "Expected `array` of length <= 2 - at `$.items`", "items: expected at most 2 items"),
    ({"items": [1, "a"]}, "Expected `int`, got `str` - at `$.items[1]`", "items[1]: expected int, got str"),
    ({"pair": [1]}, "Expected `array` of length 2, got 1 - at `$.pair`", "pair: expected exactly 2 items, got 1"),
    ({"counts": {"a": "b"}}, "Expected `int`, got `str` - at `$.counts[...]`", "counts[...]: expected int, got str"),
    ({"counts": {1: 2}}, "Expected `str`, got `int` - at `key` in `$.counts`", "counts key: expected str, got int"),
    ({"small": -1}, "Expected `int` >= 0 - at `$.small`", "small: expected int >= 0"),
    ({"inner": {}}, "Object missing required field `y` - at `$.inner`", "inner.y: missing required field"),
    ({"inner": {"y": 1, "z": 2}}, "Object contains unknown field `z` - at `$.inner`", "inner.z: unknown field"),
    ({"inner": {"y": "1"}}, "Expected `int`, got `str` - at `$.inner.y`", "inner.y: expected int, got str"),
    ({"colour": 1}, "Object contains unknown field `colour`", "colour: unknown field"),
]


@pytest.mark.parametrize(("obj", "raw", "explained"), SHAPES)
def test_explain_each_message_shape(obj: object, raw: str, explained: str) -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert(obj, _Probe, strict=True)
    # Our words for what msgspec reports, whatever its release prints; ``raw`` is what it printed
    # when this was written, and stays readable for as long as the shape of its messages does.
    assert explain_validation_error(str(info.value)) == explained
    assert explain_validation_error(raw) == explained


@pytest.mark.parametrize(
    ("raw", "explained"),
    [
        ("Object missing required field `headline` - at `$`", "headline: missing required field"),
        ("Object missing required field `headline`", "headline: missing required field"),
        ("Object missing required field `operation`", f"operation: missing required field; {EXPECTED_OPERATIONS}"),
        ("Invalid value 'foo' - at `$.operation`", f"operation: unknown operation 'foo'; {EXPECTED_OPERATIONS}"),
        ("Invalid enum value 'c' - at `$.kind`", "kind: invalid value 'c'"),
        ("Expected `str` - at `$.operation`", f"operation: {EXPECTED_OPERATIONS}"),
        ("Expected `str`, got `list` - at `$.operation`", f"operation: {EXPECTED_OPERATIONS}, got array"),
        ("Expected `array` of length 2 - at `$.pairs[0]`", "pairs[0]: expected exactly 2 items"),
        ("Expected `str` of length >= 1 - at `$.a`", "a: expected at least 1 character"),
        ("Expected `object` of length <= 4 - at `$.m`", "m: expected at most 4 entries"),
        # Our own __post_init__ checks already say "<path>: <reason>".
        ("labels[2]: duplicate label 'a'", "labels[2]: duplicate label 'a'"),
        ("Something new in a later msgspec - at `$.x[0]`", "x[0]: something new in a later msgspec"),
        ("Something new at the top", "input: something new at the top"),
    ],
)
def test_explain_message_forms(raw: str, explained: str) -> None:
    assert explain_validation_error(raw) == explained


# --- decoding never raises anything but InvalidInput ----------------------------------------

FUZZ = settings(
    max_examples=200, derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _decodes_or_refuses(decode: Any, value: object) -> None:
    try:
        op = decode(value)
    except InvalidInput as err:
        assert err.message and ": " in err.message
    else:
        assert operation_name(op) in OPERATIONS


@FUZZ
@given(json_values | job_like)
def test_decode_input_returns_a_job_or_invalid_input(value: object) -> None:
    _decodes_or_refuses(DEFAULT_SCHEMA.decode_input, value)


@FUZZ
@given(json_values | job_like)
def test_decode_json_of_any_json_value(value: object) -> None:
    _decodes_or_refuses(DEFAULT_SCHEMA.decode_json, json.dumps(value).encode())


@FUZZ
@given(st.binary(max_size=64) | st.builds(lambda v, cut: json.dumps(v).encode()[:cut], job_like, st.integers(0, 80)))
def test_decode_json_of_any_bytes(data: bytes) -> None:
    _decodes_or_refuses(DEFAULT_SCHEMA.decode_json, data)


# --- results --------------------------------------------------------------------------------


def _classify_result(**extra: Any) -> ClassifyResult:
    return ClassifyResult(
        headline=HEADLINE,
        is_opinion=False,
        is_straight_news=True,
        temporal_category="past_event",
        scores={"opinion": 0.1, "news": 0.9},
        **extra,
    )


def test_classify_result_without_company_omits_the_company_fields() -> None:
    assert msgspec.to_builtins(_classify_result()) == {
        "headline": HEADLINE,
        "is_opinion": False,
        "is_straight_news": True,
        "temporal_category": "past_event",
        "scores": {"opinion": 0.1, "news": 0.9},
    }


def test_classify_result_with_company_has_the_company_fields() -> None:
    out = msgspec.to_builtins(_classify_result(is_about_company=True, company_score=0.8))
    assert out["is_about_company"] is True
    assert out["company_score"] == 0.8
    # False and 0.0 are answers, not defaults: they stay.
    out = msgspec.to_builtins(_classify_result(is_about_company=False, company_score=0.0))
    assert out["is_about_company"] is False
    assert out["company_score"] == 0.0


def test_every_result_encodes_to_builtins_and_back() -> None:
    classify = _classify_result()
    results = [
        NliResult(results=[PairScores(scores={"entailment": 0.7, "neutral": 0.2, "contradiction": 0.1})]),
        ZeroShotResult(results=[ZeroShotScores(
            sequence=HEADLINE, labels=["dividend", "merger"], scores=[0.9, 0.1],
            scores_by_label={"merger": 0.1, "dividend": 0.9},
        )]),
        classify,
        CompanyRelevanceBatchResult(results=[CompanyRelevanceResult(
            headline=HEADLINE, company="Apple", is_about_company=True, company_score=0.95,
        )]),
        RoutineOperationsResult(
            headline=HEADLINE, core_classification=classify,
            routine_operations_by_ticker={"AAPL": RoutineOperationScore(is_routine=True, score=0.8)},
        ),
        QuantitativeCatalystResult(
            headline=HEADLINE, has_quantitative_catalyst=True, catalyst_type="dividend",
            catalyst_values=["$0.25"], confidence=0.9, scores={"dividend": 0.9},
        ),
        StrategicCatalystResult(
            headline="Acme Names Jane Doe CEO", has_strategic_catalyst=True,
            catalyst_subtype="executive_changes", confidence=0.8, scores={"executive_changes": 0.8},
        ),
    ]
    for result in results:
        out = msgspec.to_builtins(result)
        assert msgspec.convert(out, type(result)) == result
        assert json.loads(msgspec.json.encode(result)) == out
    routine = msgspec.to_builtins(results[4])
    assert "is_about_company" not in routine["core_classification"]
    strategic = msgspec.to_builtins(StrategicCatalystResult(
        headline="h", has_strategic_catalyst=False, catalyst_subtype=None, confidence=0.1, scores={},
    ))
    assert strategic["catalyst_subtype"] is None  # always present, like the headline service's API


def test_result_literals_are_checked_on_decode() -> None:
    out = msgspec.to_builtins(_classify_result())
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({**out, "temporal_category": "someday"}, ClassifyResult)
