"""Operations: plans (pairs and aggregators), their semantics, and the shared job path.

Three kinds of model: ``tiny_model`` (the shared synthetic model) for shapes and types; a
"sharp" synthetic model with large random weights, whose scores differ enough between labels
for comparisons with the transformers pipeline to mean something; and a scripted engine whose
logits are chosen per hypothesis, for the decision rules (thresholds, argmax, nulls).
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from types import SimpleNamespace

import msgspec
import numpy as np
import pytest
import torch
from layouts import LAYOUTS, started

from batching import Overloaded
from schemas import DEFAULT_SCHEMA, OPERATIONS
from worker import hypotheses as H
from worker.engine import NliEngine
from worker.hypotheses import Thresholds
from worker.model import NliModel
from worker.synthetic import build_synthetic
from worker.operations import extract_catalyst_values, plan_job
from worker.service import run_job
from worker.settings import Settings, SettingsError

HEADLINES = Path(__file__).parent / "data" / "example_headlines.txt"
ENGINE_SETTINGS = Settings(model_name="synthetic:tiny", warmup_max_len=16)

PAIR_COUNTS = {  # for the example jobs of conftest.py
    "nli": 2,
    "zero_shot": 6,
    "classify": 6,  # 5 labels + the company hypothesis
    "classify_batch": 15,
    "company_relevance": 1,
    "company_relevance_batch": 2,
    "routine_operations": 7,  # classify's 5 + 2 distinct tickers
    "detect_quantitative_catalyst": len(H.QUANTITATIVE_CATALYSTS),
    "detect_strategic_catalyst": len(H.STRATEGIC_CATALYSTS),
}


def decode(operation: str, **fields: object):
    return DEFAULT_SCHEMA.decode_input({"operation": operation, **fields})


# --- catalyst figures --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headline", "values"),
    [
        ("Sompo To Acquire Aspen For $3.5B, Or $37.50/Share", ["$3.5B", "$37.50/Share"]),
        ("Universal Security Instruments Increases Quarterly Dividend to $1 Per Share", ["$1 Per Share"]),
        ("Riskified Board Authorizes Repurchase Of Up To $75M", ["$75M"]),
        ("Tesla Reports Record Q3 Deliveries, Shares Jump 5%", ["5%"]),
        ("Forecasts $1B Launch-Year Revenue, Sees $18B-$22B Over 5 Years", ["$1B", "$18B", "$22B"]),
        ("Microsoft Azure Revenue Grows 29% in Cloud Push", ["29%"]),
        ("Company Beats Earnings Expectations With $2 EPS", ["$2"]),
        ("Dell Projects $10B Revenue By 2027", ["$10B"]),
        ("Tesla to Report Q4 Earnings Next Week", []),
        ("Workhorse Group And ATW Partners Announce Merger Agreement", []),
    ],
)
def test_catalyst_values_in_real_headlines(headline: str, values: list[str]) -> None:
    assert headline in HEADLINES.read_text(encoding="utf-8").splitlines()
    assert extract_catalyst_values(headline) == values


def test_catalyst_values_forms_and_repeats() -> None:
    assert extract_catalyst_values("Declares $1.50 Dividend; Pays $1.50 Again") == ["$1.50"]
    assert extract_catalyst_values("Raises $2 billion, Up 2.5%, $1,250.75/share") == [
        "$2 billion", "2.5%", "$1,250.75/share"
    ]
    assert extract_catalyst_values("Buys 3M Stake For $3M In 2025 (Q2)") == ["$3M"]


# --- plans ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", OPERATIONS)
def test_every_plan_holds_all_its_pairs(operation: str, tiny_model: NliModel, example_jobs) -> None:
    plan = plan_job(decode(operation, **example_jobs[operation]), tiny_model)
    assert len(plan.pairs) == PAIR_COUNTS[operation]
    assert all(isinstance(p, str) and isinstance(h, str) for p, h in plan.pairs)


def test_classify_pairs_are_the_hypotheses(tiny_model: NliModel) -> None:
    plan = plan_job(decode("classify", headline="Apple Declares Dividend", company="Apple"), tiny_model)
    assert {premise for premise, _ in plan.pairs} == {"Apple Declares Dividend"}
    assert [h for _, h in plan.pairs] == [
        H.OPINION, H.STRAIGHT_NEWS, *H.TEMPORAL.values(), "This text is about Apple."
    ]


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_every_operation_on_tiny_model_in_one_submission(
    operation: str, tiny_model: NliModel, example_jobs, check_job_output
) -> None:
    async with NliEngine.start(ENGINE_SETTINGS, model=tiny_model) as engine:
        calls: list[int] = []
        enqueue = engine.enqueue

        def counting_enqueue(pairs):
            calls.append(len(pairs))
            return enqueue(pairs)

        engine.enqueue = counting_enqueue  # type: ignore[method-assign]
        job = {"operation": operation, **example_jobs[operation]}
        out = await run_job(engine, DEFAULT_SCHEMA, job, job_id="t")
        submitted = engine.batcher.stats.jobs_submitted
    check_job_output(operation, example_jobs[operation], out)
    assert calls == [PAIR_COUNTS[operation]]
    assert submitted == 1  # one submission: the job's pairs entered the queue together
    msgspec.json.encode(out)  # plain JSON types only


# --- zero_shot against the transformers pipeline -------------------------------------------------


@pytest.fixture(scope="module", params=["synthetic:tiny", "synthetic:tiny-binary"])
def sharp_model(request) -> NliModel:
    """A tiny model with large random weights, so labels score visibly differently."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    tokenizer, base = build_synthetic(request.param)
    config = DistilBertConfig(**{**base.config.to_dict(), "initializer_range": 0.4})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = DistilBertForSequenceClassification(config)
    return NliModel(f"{request.param}-sharp", tokenizer, model)


ZERO_SHOT_TEXTS = ["Apple Declares $0.25 Dividend", "Fed Raises Interest Rates by 25 Basis Points"]
ZERO_SHOT_LABELS = ["dividend", "monetary policy", "weather report", "a long and rambling label here"]


@pytest.mark.parametrize(
    ("labels", "multi_label", "template"),
    [
        (ZERO_SHOT_LABELS, False, "This example is {}."),
        (ZERO_SHOT_LABELS, True, "This example is {}."),
        (["dividend"], False, "This headline is about {}."),  # one label: the pipeline goes multi-label
    ],
)
@pytest.mark.parametrize("layout", LAYOUTS)
async def test_zero_shot_matches_transformers_pipeline(sharp_model, labels, multi_label, template, layout) -> None:
    import transformers

    pipe = transformers.pipeline(
        "zero-shot-classification", model=sharp_model.model, tokenizer=sharp_model.tokenizer
    )
    expected = pipe(
        ZERO_SHOT_TEXTS, candidate_labels=labels, hypothesis_template=template, multi_label=multi_label
    )
    job = {
        "operation": "zero_shot",
        "texts": ZERO_SHOT_TEXTS,
        "labels": labels,
        "template": template,
        "multi_label": multi_label,
    }
    async with started(layout, ENGINE_SETTINGS, sharp_model) as (front, _):
        out = await run_job(front, DEFAULT_SCHEMA, job)
    assert len(out["results"]) == len(expected)
    for ours, theirs in zip(out["results"], expected):
        assert ours["sequence"] == theirs["sequence"]
        assert ours["labels"] == theirs["labels"]
        np.testing.assert_allclose(ours["scores"], theirs["scores"], atol=1e-5)
    if not multi_label and len(labels) > 1:
        spread = max(out["results"][0]["scores"]) - min(out["results"][0]["scores"])
        assert spread > 1e-2  # the comparison above could tell labels apart


async def test_zero_shot_scores_follow_their_labels_when_shuffled(sharp_model) -> None:
    shuffled = ZERO_SHOT_LABELS[:]
    random.Random(7).shuffle(shuffled)
    assert shuffled != ZERO_SHOT_LABELS
    async with NliEngine.start(ENGINE_SETTINGS, model=sharp_model) as engine:
        outs = [
            await run_job(
                engine, DEFAULT_SCHEMA, {"operation": "zero_shot", "text": ZERO_SHOT_TEXTS[0], "labels": labels}
            )
            for labels in (ZERO_SHOT_LABELS, shuffled)
        ]
    first, second = (out["results"][0] for out in outs)
    for label in ZERO_SHOT_LABELS:
        assert first["scores_by_label"][label] == pytest.approx(second["scores_by_label"][label], abs=1e-6)
    assert first["labels"] == second["labels"]  # sorted by score, whatever order they came in


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_nli_probabilities_are_keyed_by_model_label(sharp_model, layout) -> None:
    pairs = [["Apple Declares $0.25 Dividend", "This is about a dividend."], ["Fed Raises Rates", "It rains."]]
    async with started(layout, ENGINE_SETTINGS, sharp_model) as (front, engine):
        out = await run_job(front, DEFAULT_SCHEMA, {"operation": "nli", "pairs": pairs})
        logits = await engine.infer([tuple(p) for p in pairs])
    probs = torch.softmax(torch.from_numpy(logits).double(), dim=-1).numpy()
    for row, result in zip(probs, out["results"]):
        assert list(result["scores"]) == list(sharp_model.labels)
        np.testing.assert_allclose(list(result["scores"].values()), row, atol=1e-7)


# --- decision rules, with scripted logits -----------------------------------------------------


class ScriptedEngine:
    """An engine stand-in: each pair's logits depend only on its hypothesis.

    ``entail[h]`` is the (entailment - contradiction) logit gap of hypothesis ``h`` (0 when
    unlisted); MNLI label order (entailment, neutral, contradiction).
    """

    def __init__(self, entail: dict[str, float], thresholds: Thresholds = Thresholds()) -> None:
        self.model = SimpleNamespace(
            labels=("ENTAILMENT", "NEUTRAL", "CONTRADICTION"), entailment_index=0, contradiction_index=2
        )
        self.settings = Settings(thresholds=thresholds)
        self.entail = entail
        self.calls: list[list[tuple[str, str]]] = []

    async def infer(self, pairs):
        self.calls.append(list(pairs))
        return np.array([[self.entail.get(h, 0.0), 0.0, 0.0] for _, h in pairs], dtype=np.float32)

    def enqueue(self, pairs):
        """The service's way in: queue now, logits later (here: ``infer`` when awaited)."""
        return SimpleNamespace(logits=lambda: self.infer(pairs))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


async def run(engine: ScriptedEngine, operation: str, **fields: object) -> dict:
    out = await run_job(engine, DEFAULT_SCHEMA, {"operation": operation, **fields})
    assert "error" not in out, out
    return out


async def test_classify_decisions() -> None:
    engine = ScriptedEngine(
        {H.OPINION: 2.0, H.TEMPORAL["future_event"]: 1.0, "This text is about Apple.": -1.0}
    )
    out = await run(engine, "classify", headline="Why Apple Will Win", company="Apple")
    assert out["is_opinion"] is True and out["is_straight_news"] is False
    assert out["scores"]["opinion"] == pytest.approx(sigmoid(2.0))
    assert out["temporal_category"] == "future_event"
    assert out["company_score"] == pytest.approx(sigmoid(-1.0)) and out["is_about_company"] is False
    assert len(engine.calls) == 1 and len(engine.calls[0]) == 6


async def test_thresholds_come_from_settings() -> None:
    entail = {H.OPINION: 0.5, "This text is about Apple.": 0.5}
    strict = ScriptedEngine(entail, Thresholds(opinion=0.7, company=0.7))
    lax = ScriptedEngine(entail)
    for engine, expected in ((strict, False), (lax, True)):
        out = await run(engine, "classify", headline="Apple", company="Apple")
        assert out["is_opinion"] is expected and out["is_about_company"] is expected


async def test_routine_operations_per_ticker() -> None:
    engine = ScriptedEngine({H.ROUTINE.format(ticker="FE"): 3.0, H.ROUTINE.format(ticker="BAC"): -3.0})
    out = await run(
        engine, "routine_operations", headline="West Penn Power Completes Upgrades", ticker_symbols=["FE", "BAC"]
    )
    by_ticker = out["routine_operations_by_ticker"]
    assert by_ticker["FE"] == {"is_routine": True, "score": pytest.approx(sigmoid(3.0))}
    assert by_ticker["BAC"] == {"is_routine": False, "score": pytest.approx(sigmoid(-3.0))}
    assert out["core_classification"]["headline"] == out["headline"]


async def test_quantitative_catalyst_needs_a_type_and_a_figure() -> None:
    types = H.QUANTITATIVE_CATALYSTS
    engine = ScriptedEngine({types["acquisition"]: 2.0, types["dividend"]: 1.0})
    headline = "Sompo To Acquire Aspen For $3.5B, Or $37.50/Share"
    found = await run(engine, "detect_quantitative_catalyst", headline=headline)
    assert found["has_quantitative_catalyst"] is True and found["catalyst_type"] == "acquisition"
    assert found["catalyst_values"] == ["$3.5B", "$37.50/Share"]
    assert found["confidence"] == pytest.approx(sigmoid(2.0))
    no_figure = await run(engine, "detect_quantitative_catalyst", headline="Sompo To Acquire Aspen")
    assert no_figure["has_quantitative_catalyst"] is False and no_figure["catalyst_type"] is None
    assert no_figure["confidence"] == pytest.approx(sigmoid(2.0))
    strict = ScriptedEngine({}, Thresholds(quantitative_catalyst=0.6))
    weak = await run(strict, "detect_quantitative_catalyst", headline="Up 5%")
    assert weak["has_quantitative_catalyst"] is False and weak["catalyst_values"] == ["5%"]


async def test_strategic_catalyst_best_subtype_or_null() -> None:
    subtypes = H.STRATEGIC_CATALYSTS
    engine = ScriptedEngine({subtypes["merger_agreement"]: 1.5, subtypes["partnership"]: 1.0})
    out = await run(engine, "detect_strategic_catalyst", headline="Workhorse And ATW Announce Merger Agreement")
    assert out["has_strategic_catalyst"] is True and out["catalyst_subtype"] == "merger_agreement"
    assert out["confidence"] == pytest.approx(sigmoid(1.5))
    strict = ScriptedEngine({}, Thresholds(strategic_catalyst=0.9))
    none = await run(strict, "detect_strategic_catalyst", headline="Stock Market Reaches New High")
    assert none["has_strategic_catalyst"] is False and none["catalyst_subtype"] is None


async def test_classify_batch_is_one_call_for_all_headlines() -> None:
    engine = ScriptedEngine({H.OPINION: 1.0})
    headlines = [f"Headline {i}" for i in range(20)]
    out = await run(engine, "classify_batch", headlines=headlines, company="Apple")
    assert [r["headline"] for r in out["results"]] == headlines
    assert len(engine.calls) == 1 and len(engine.calls[0]) == 20 * 6


# --- the service path's errors ---------------------------------------------------------------------


async def test_service_errors_and_bugs_become_error_outputs() -> None:
    from structlog.testing import capture_logs

    class Failing(ScriptedEngine):
        def __init__(self, error: Exception) -> None:
            super().__init__({})
            self.error = error

        async def infer(self, pairs):
            raise self.error

    job = {"operation": "classify", "headline": "x"}
    overloaded = await run_job(Failing(Overloaded("queue full")), DEFAULT_SCHEMA, job)
    assert overloaded == {"error": "overloaded: queue full"}
    with capture_logs() as logs:
        out = await run_job(Failing(KeyError("secret detail")), DEFAULT_SCHEMA, job, job_id="j-1")
    assert out == {"error": "internal: unexpected error; see the worker log (job j-1)"}
    crash = next(entry for entry in logs if entry["event"] == "job_crashed")
    assert crash["log_level"] == "error" and crash["exc_info"] is True
    bad = await run_job(Failing(AssertionError()), DEFAULT_SCHEMA, {"operation": "classify", "headline": 3})
    assert bad == {"error": "invalid_input: headline: expected str, got int"}


# --- thresholds ---------------------------------------------------------------------------------


def test_thresholds_are_validated_and_read_from_env() -> None:
    settings = Settings.from_env({"OPINION_THRESHOLD": "0.7", "STRATEGIC_CATALYST_THRESHOLD": "0.25"})
    assert settings.thresholds == Thresholds(opinion=0.7, strategic_catalyst=0.25)
    assert Settings.from_env({}).thresholds == Thresholds()
    with pytest.raises(SettingsError, match="COMPANY_THRESHOLD"):
        Settings.from_env({"COMPANY_THRESHOLD": "1.5"})
    with pytest.raises(SettingsError, match="ROUTINE_THRESHOLD"):
        Settings.from_env({"ROUTINE_THRESHOLD": "often"})
    for bad in (-0.1, 1.01, float("nan")):
        with pytest.raises(ValueError, match="OPINION_THRESHOLD"):
            Thresholds(opinion=bad)
