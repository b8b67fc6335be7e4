"""Decoding job inputs: the limits put into the types, and msgspec's errors made readable.

``build_job_schema(limits)`` subclasses each job class of ``schemas.jobs`` with msgspec ``Meta``
constraints taken from ``limits`` and builds the decoders once. Every failure leaves as
``InvalidInput("<field path>: <reason>")``, with paths relative to the job input
(``headlines[3]``, ``pairs[0][1]``), so callers read ``invalid_input: headline: must not be blank``.
"""

# No ``from __future__ import annotations`` here: the constrained classes are built inside a
# function, and msgspec must see their annotations as objects, not as names to look up.

import functools
import json
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Final, Union

import msgspec

from batching.errors import InvalidInput
from schemas.jobs import (
    DEFAULT_TEMPLATE,
    OPERATIONS,
    ClassifyBatchJob,
    ClassifyJob,
    CompanyRelevanceBatchJob,
    CompanyRelevanceJob,
    Job,
    NliJob,
    Operation,
    QuantitativeCatalystJob,
    RoutineOperationsJob,
    StrategicCatalystJob,
    ZeroShotJob,
    operation_name,
)
from schemas.limits import Limits

NON_BLANK_PATTERN: Final = r"[^\s\x00-\x1f\x7f-\x9f\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]"
"""A visible character: not whitespace, a control character or an invisible format character
(zero-width spaces and joiners, direction marks, the byte-order mark)."""
TICKER_PATTERN: Final = r"^[A-Z0-9.\-]+$"

_PATTERN_REASONS: Final = {
    NON_BLANK_PATTERN: "must not be blank",
    TICKER_PATTERN: "must contain only A-Z, 0-9, '.' and '-'",
}
_UNPAIRED_SURROGATE = re.compile("[\ud800-\udfff]")
_VISIBLE = re.compile(NON_BLANK_PATTERN)


class JobSchema:
    """The job input classes for one ``Limits`` value and the two ways in, built once."""

    __slots__ = ("limits", "job_types", "operation_type", "_json_decoder")

    def __init__(self, limits: Limits, job_types: Mapping[str, type[Job]]) -> None:
        self.limits = limits
        self.job_types: Mapping[str, type[Job]] = MappingProxyType(dict(job_types))
        """The constrained class of each operation, by operation name."""
        self.operation_type: Any = Union[tuple(self.job_types.values())]  # noqa: UP007
        """The tagged union msgspec decodes into."""
        self._json_decoder = msgspec.json.Decoder(self.operation_type)

    def decode_input(self, obj: object) -> Operation:
        """Decode a RunPod job's ``input`` (already Python objects) with strict types."""
        # Converting to the operation's own class, found by its tag, is several times cheaper than
        # converting to the tagged union (msgspec has nowhere to cache a Union's type info between calls).
        # A missing or unknown tag goes through the union, for msgspec's own error message.
        operation = obj.get("operation") if isinstance(obj, dict) else None
        target = self.operation_type
        if isinstance(operation, str):
            target = self.job_types.get(operation, target)
        try:
            op: Job = msgspec.convert(obj, target, strict=True)
        except msgspec.ValidationError as err:
            raise InvalidInput(explain_validation_error(str(err))) from err
        except RecursionError as err:
            raise InvalidInput("input: nested too deeply") from err
        _check_texts(op)
        return op  # type: ignore[return-value]

    def decode_json(self, data: bytes | bytearray | memoryview | str) -> Operation:
        """Decode an HTTP body that holds a job input as JSON."""
        try:
            op: Job = self._json_decoder.decode(data)
        except msgspec.ValidationError as err:  # a subclass of DecodeError: catch it first
            raise InvalidInput(explain_validation_error(str(err))) from err
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as err:
            raise malformed_json(data) from err
        _check_texts(op)
        return op  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"JobSchema({self.limits!r})"


def malformed_json(data: bytes | bytearray | memoryview | str) -> InvalidInput:
    """``body: malformed JSON: <why>`` for a body the JSON decoder refused, in the project's words.

    msgspec's own messages (and whether a bad UTF-8 string raises its error or Python's) change
    between releases, so the reason is found again here with the standard library's parser, on
    the error path only.
    """
    return InvalidInput(f"body: malformed JSON: {why_not_json(data)}")


_JSON_SPACE: Final = " \t\n\r"


def why_not_json(data: bytes | bytearray | memoryview | str) -> str:
    """Why ``data`` is not one JSON value: ``invalid UTF-8 at byte 3``, ``nested too deeply``..."""
    if isinstance(data, str):
        text = data
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as err:
            return f"invalid UTF-8 at byte {err.start}"
    start = len(text) - len(text.lstrip(_JSON_SPACE))
    end_of_text = len(text.rstrip(_JSON_SPACE))
    try:
        value, end = json.JSONDecoder(parse_constant=_refuse_constant).raw_decode(text, start)
    except RecursionError:
        return "nested too deeply"
    except _NotJson as err:
        return str(err)
    except json.JSONDecodeError as err:
        if err.pos >= end_of_text:
            return "the body ends before its JSON value does"
        return f"unexpected character at byte {_byte_offset(text, err.pos)}"
    if end < end_of_text:
        trailing = len(text) - len(text[end:].lstrip(_JSON_SPACE))
        return f"trailing characters after the JSON value, at byte {_byte_offset(text, trailing)}"
    if _has_unpaired_surrogate(value):
        return "a string holds an unpaired surrogate escape (\\ud800-\\udfff alone)"
    return "not valid JSON"


class _NotJson(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON value")


def _byte_offset(text: str, index: int) -> int:
    return len(text[:index].encode("utf-8", "surrogatepass"))


def _has_unpaired_surrogate(value: object) -> bool:
    if isinstance(value, str):
        return _UNPAIRED_SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_unpaired_surrogate(k) or _has_unpaired_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_unpaired_surrogate(item) for item in value)
    return False


@functools.cache
def build_job_schema(limits: Limits) -> JobSchema:
    """The ``JobSchema`` for ``limits``; one per distinct value, built on first use."""
    return JobSchema(limits, {operation_name(cls): cls for cls in _constrained_job_types(limits)})


def _constrained_job_types(limits: Limits) -> tuple[type[Job], ...]:
    """Subclasses of the job classes whose fields carry ``limits`` as msgspec constraints."""

    # No pattern here: msgspec would run it on every item before it checks a list's length, so a
    # body of 250,000 one-character headlines cost its refusal five times over. _check_texts runs
    # once the types, lengths and list sizes have passed.
    def text(max_chars: int) -> Any:
        return Annotated[str, msgspec.Meta(max_length=max_chars)]

    def items(item: Any, max_items: int) -> Any:
        return Annotated[list[item], msgspec.Meta(min_length=1, max_length=max_items)]

    Text = text(limits.max_text_chars)
    Label = text(limits.max_label_chars)
    Company = text(limits.max_company_chars)
    Ticker = Annotated[
        str, msgspec.Meta(min_length=1, max_length=limits.max_ticker_chars, pattern=TICKER_PATTERN)
    ]
    Headlines = items(Text, limits.max_headlines_per_job)

    class Nli(NliJob, tag="nli"):
        pairs: items(tuple[Text, Text], limits.max_pairs_per_job)

    class ZeroShot(ZeroShotJob, tag="zero_shot"):
        labels: items(Label, limits.max_labels)
        text: Text | None = None
        texts: items(Text, limits.max_texts_per_job) | None = None
        template: Label = DEFAULT_TEMPLATE
        multi_label: bool = False

    class Classify(ClassifyJob, tag="classify"):
        headline: Text
        company: Company | None = None

    class ClassifyBatch(ClassifyBatchJob, tag="classify_batch"):
        headlines: Headlines
        company: Company | None = None

    class CompanyRelevance(CompanyRelevanceJob, tag="company_relevance"):
        headline: Text
        company: Company

    class CompanyRelevanceBatch(CompanyRelevanceBatchJob, tag="company_relevance_batch"):
        headlines: Headlines
        company: Company

    class RoutineOperations(RoutineOperationsJob, tag="routine_operations"):
        headline: Text
        ticker_symbols: items(Ticker, limits.max_tickers)

    class QuantitativeCatalyst(QuantitativeCatalystJob, tag="detect_quantitative_catalyst"):
        headline: Text

    class StrategicCatalyst(StrategicCatalystJob, tag="detect_strategic_catalyst"):
        headline: Text

    return (
        Nli,
        ZeroShot,
        Classify,
        ClassifyBatch,
        CompanyRelevance,
        CompanyRelevanceBatch,
        RoutineOperations,
        QuantitativeCatalyst,
        StrategicCatalyst,
    )


DEFAULT_SCHEMA: Final = build_job_schema(Limits())


# --- msgspec's messages, made readable -------------------------------------------------------

_EXPECTED_OPERATIONS: Final = "expected one of " + ", ".join(sorted(OPERATIONS))
_TYPE_NAMES: Final = {
    "NoneType": "null",
    "list": "array",
    "tuple": "array",
    "dict": "object",
}
_LOCATED = re.compile(r"(?P<body>.*?) - at `(?P<path>[^`]*)`(?: in `(?P<container>[^`]*)`)?", re.S)
_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]*)`")
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>[^`]*)`")
_INVALID_VALUE = re.compile(r"Invalid (?:enum )?value (?P<value>.*)", re.S)
_WRONG_TYPE = re.compile(r"Expected `(?P<expected>[^`]*)`(?:, got `(?P<got>[^`]*)`)?")
_LENGTH = re.compile(
    r"Expected `(?P<kind>[^`]*)` of length (?P<op>>= |<= |)(?P<n>\d+)(?:, got (?P<got>\d+))?"
)
_PATTERN = re.compile(r"Expected `str` matching regex (?P<regex>.*)", re.S)
_OWN_MESSAGE = re.compile(r"[A-Za-z_][\w.\[\]]*: ")
_UNITS: Final = {
    "str": ("character", "characters"),
    "array": ("item", "items"),
    "object": ("entry", "entries"),
}


def explain_validation_error(message: str, root: str = "input") -> str:
    """Turn a ``msgspec.ValidationError`` message into ``"<field path>: <reason>"``.

    ``"Expected `str`, got `int` - at `$.headline`"`` becomes ``"headline: expected str, got
    int"``; an error in the value itself is named ``root`` (``input: expected an object, got
    array``); messages our own ``__post_init__`` checks raise already have that form and pass
    through unchanged.
    """
    located = _LOCATED.fullmatch(message)
    if located is None:
        body, path = message, ""
    else:
        body, path = located["body"], _relative_path(located["path"])
        if located["container"] is not None:  # "- at `key` in `$.d`": a mapping key is wrong
            path = f"{_relative_path(located['container']) or root} key"
    if located is None and _OWN_MESSAGE.match(message):
        return message

    if match := _MISSING.fullmatch(body):
        field = _join(path, match["field"])
        if field == "operation":
            return f"operation: missing required field; {_EXPECTED_OPERATIONS}"
        return f"{field}: missing required field"
    if match := _UNKNOWN.fullmatch(body):
        return f"{_join(path, match['field'])}: unknown field"
    if match := _INVALID_VALUE.fullmatch(body):
        if path == "operation":
            value = _shorten(match["value"])
            return f"operation: unknown operation {value}; {_EXPECTED_OPERATIONS}"
        return f"{path or root}: invalid value {_shorten(match['value'])}"
    if match := _LENGTH.fullmatch(body):
        return f"{path or root}: {_length_reason(match)}"
    if match := _PATTERN.fullmatch(body):
        regex = match["regex"]
        reason = next(
            (text for pattern, text in _PATTERN_REASONS.items() if repr(pattern) == regex),
            f"expected str matching regex {regex}",
        )
        return f"{path or root}: {reason}"
    if match := _WRONG_TYPE.fullmatch(body):
        return _wrong_type(path, match["expected"], match["got"], root)
    return f"{path or root}: {_lower_first(body.replace('`', ''))}"


def _wrong_type(path: str, expected: str, got: str | None, root: str) -> str:
    got_name = _TYPE_NAMES.get(got, got) if got is not None else None
    suffix = f", got {got_name}" if got_name else ""
    if path == "operation":
        return f"operation: {_EXPECTED_OPERATIONS}{suffix}"
    expected_names = " or ".join(_TYPE_NAMES.get(name, name) for name in expected.split(" | "))
    if path == "":  # the value itself
        if got_name == "null":
            return f"{root}: missing"
        return f"{root}: expected {'an object' if expected == 'object' else expected_names}{suffix}"
    return f"{path}: expected {expected_names}{suffix}"


def _length_reason(match: re.Match[str]) -> str:
    kind, op, n = match["kind"], match["op"], int(match["n"])
    unit = _UNITS.get(kind, ("element", "elements"))[n != 1]
    bound = {">= ": "at least ", "<= ": "at most ", "": "exactly "}[op]
    got = f", got {match['got']}" if match["got"] else ""
    return f"expected {bound}{n} {unit}{got}"


def _relative_path(path: str) -> str:
    """``$.pairs[0][1]`` → ``pairs[0][1]``; ``$`` (the job input itself) → ``""``."""
    if path.startswith("$."):
        return path[2:]
    return path.removeprefix("$")


def _join(path: str, field: str) -> str:
    return f"{path}.{field}" if path else field


def _shorten(text: str, max_chars: int = 80) -> str:
    """Echo at most ``max_chars`` of a caller's value back in an error message."""
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def _lower_first(text: str) -> str:
    """``Input data was truncated`` → ``input data was truncated``; ``JSON ...`` stays."""
    return text if text[1:2].isupper() else text[:1].lower() + text[1:]


def _check_texts(op: Job) -> None:
    """``InvalidInput`` naming the first text field that is blank (no visible character) or holds
    an unpaired surrogate (``json.loads``, which RunPod's SDK uses, lets ``"\\ud800"`` through;
    tokenizers would fail on it). Tickers have their own pattern."""
    for name in op.__struct_fields__:
        if name != "ticker_symbols":
            found = _bad_text(getattr(op, name), name)
            if found is not None:
                raise InvalidInput(found)


def _bad_text(value: object, path: str) -> str | None:
    if isinstance(value, str):
        if _VISIBLE.search(value) is None:
            return f"{path}: must not be blank"
        if not value.isascii() and _UNPAIRED_SURROGATE.search(value):
            return f"{path}: must not contain unpaired surrogates"
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _bad_text(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None
