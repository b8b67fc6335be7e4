"""Shared pytest fixtures, one labelled section per module they serve."""

from __future__ import annotations

import copy
import math

import pytest

# --- worker.model -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model():
    """The 2-layer synthetic DistilBERT on CPU fp32: real vocabulary, random fixed weights."""
    from worker.model import NliModel

    return NliModel.load("synthetic:tiny", device="cpu")


# --- worker.operations, worker.serverless: one example job per operation, and output checks -----

_EXAMPLE_JOBS: dict[str, dict] = {
    "nli": {"pairs": [["Apple Declares $0.25 Dividend", "This is about a dividend."], ["a", "b"]]},
    "zero_shot": {"texts": ["Fed Raises Rates", "Tesla Shares Surge"], "labels": ["macro", "stocks", "crypto"]},
    "classify": {"headline": "Apple Declares $0.25 Dividend", "company": "Apple"},
    "classify_batch": {"headlines": ["Fed Raises Rates", "Why the Fed Is Wrong", "Tesla Q4"]},
    "company_relevance": {"headline": "Apple Declares $0.25 Dividend", "company": "Apple"},
    "company_relevance_batch": {"headlines": ["Apple Declares Dividend", "Fed Raises Rates"], "company": "Apple"},
    "routine_operations": {"headline": "West Penn Power Completes Upgrades", "ticker_symbols": ["FE", "BAC", "FE"]},
    "detect_quantitative_catalyst": {"headline": "Sompo To Acquire Aspen For $3.5B, Or $37.50/Share"},
    "detect_strategic_catalyst": {"headline": "Workhorse Group And ATW Partners Announce Merger Agreement"},
}
_CLASSIFY_SCORE_KEYS = {"opinion", "straight_news", "past_event", "future_event", "general_topic"}


@pytest.fixture(scope="session")
def example_jobs() -> dict[str, dict]:
    """One valid job input (without its "operation") per operation, by operation name."""
    return copy.deepcopy(_EXAMPLE_JOBS)


@pytest.fixture(scope="session")
def check_job_output():
    """``check(operation, job_input, output)``: asserts the output's shape, keys and types."""
    return _check_job_output


def _check_classify(result: dict, *, company: bool) -> None:
    from schemas import TEMPORAL_CATEGORIES

    assert isinstance(result["headline"], str)
    assert isinstance(result["is_opinion"], bool) and result["is_straight_news"] is not result["is_opinion"]
    assert result["temporal_category"] in TEMPORAL_CATEGORIES
    assert set(result["scores"]) == _CLASSIFY_SCORE_KEYS | ({"company"} if company else set())
    assert all(0.0 <= p <= 1.0 for p in result["scores"].values())
    assert math.isclose(result["scores"]["opinion"] + result["scores"]["straight_news"], 1.0)
    assert math.isclose(sum(result["scores"][c] for c in TEMPORAL_CATEGORIES), 1.0)
    if company:
        assert isinstance(result["is_about_company"], bool)
        assert result["company_score"] == result["scores"]["company"]
    else:
        assert "is_about_company" not in result and "company_score" not in result


def _check_job_output(operation: str, job: dict, out: dict) -> None:
    """The output shape of each operation, as callers of the headline service read it."""
    from schemas import CATALYST_TYPES
    from worker.hypotheses import STRATEGIC_CATALYSTS as _STRATEGIC_CATALYSTS
    from worker.operations import extract_catalyst_values as _extract_catalyst_values

    assert "error" not in out, out
    if operation == "nli":
        assert len(out["results"]) == len(job["pairs"])
        for pair in out["results"]:
            assert set(pair["scores"]) == {"ENTAILMENT", "NEUTRAL", "CONTRADICTION"}
            assert math.isclose(sum(pair["scores"].values()), 1.0)
    elif operation == "zero_shot":
        texts = job.get("texts") or [job["text"]]
        assert [r["sequence"] for r in out["results"]] == texts
        for r in out["results"]:
            assert sorted(r["labels"]) == sorted(job["labels"])
            assert r["scores"] == sorted(r["scores"], reverse=True)
            assert [r["scores_by_label"][label] for label in r["labels"]] == r["scores"]
    elif operation == "classify":
        _check_classify(out, company="company" in job)
    elif operation == "classify_batch":
        assert [r["headline"] for r in out["results"]] == job["headlines"]
        for r in out["results"]:
            _check_classify(r, company="company" in job)
    elif operation == "company_relevance":
        assert out["company"] == job["company"] and isinstance(out["is_about_company"], bool)
        assert 0.0 <= out["company_score"] <= 1.0
    elif operation == "company_relevance_batch":
        assert [r["headline"] for r in out["results"]] == job["headlines"]
        assert all(r["company"] == job["company"] for r in out["results"])
    elif operation == "routine_operations":
        _check_classify(out["core_classification"], company=False)
        assert set(out["routine_operations_by_ticker"]) == set(job["ticker_symbols"])
        for score in out["routine_operations_by_ticker"].values():
            assert set(score) == {"is_routine", "score"} and isinstance(score["is_routine"], bool)
    elif operation == "detect_quantitative_catalyst":
        assert set(out["scores"]) == set(CATALYST_TYPES)
        assert out["catalyst_values"] == _extract_catalyst_values(job["headline"])
        assert out["catalyst_type"] in (*CATALYST_TYPES, None)
        assert (out["catalyst_type"] is not None) == out["has_quantitative_catalyst"]
        assert out["confidence"] == max(out["scores"].values())
    elif operation == "detect_strategic_catalyst":
        assert set(out["scores"]) == set(_STRATEGIC_CATALYSTS)
        assert (out["catalyst_subtype"] is not None) == out["has_strategic_catalyst"]
        assert out["confidence"] == max(out["scores"].values())
    else:  # pragma: no cover
        raise AssertionError(operation)


# --- worker.pod: a real server on loopback ------------------------------------------------------


@pytest.fixture
def pod_server(tiny_model):
    """``async with pod_server(settings=None, **overrides) as base_url:`` a real pod server.

    Runs ``worker.pod`` under uvicorn in the test's own event loop, on a free 127.0.0.1 port and
    the session's ``tiny_model`` (nothing is loaded), and yields ``http://127.0.0.1:<port>`` once
    the engine serves jobs. ``settings`` defaults to ``synthetic:tiny`` on CPU with a short
    warm-up; ``overrides`` replace its fields (``max_queue_pairs=8``, ``api_key="k"``). Leaving
    the block stops the server, then the engine. Enter it in the test body, not in an async
    fixture: a fixture holding its task group fails at teardown (pytest-dev/pytest-asyncio#1191).
    The model is the shared object, so a test may monkeypatch ``tiny_model.run`` to hold batches.
    """
    import msgspec

    from worker.pod import running_server
    from worker.settings import Settings

    def serve(settings: Settings | None = None, **overrides):
        settings = settings or Settings(model_name="synthetic:tiny", device="cpu", warmup_max_len=16)
        return running_server(msgspec.structs.replace(settings, **overrides), model=tiny_model)

    return serve


# --- loadtest.emulator: a local RunPod queue --------------------------------------------------------


@pytest.fixture
def runpod_emulator():
    """A factory for a local RunPod queue served on a free loopback port in the test's own loop.

    Use it in the test body (servers start there, never in async fixtures:
    pytest-dev/pytest-asyncio#1191)::

        async with runpod_emulator(api_key=None) as emu:
            async with httpx.AsyncClient(base_url=emu.base_url, headers=emu.headers) as client:
                job = (await client.post("/run", json={"input": {...}})).json()  # {"id", "status"}

    ``emu.base_url`` is the public side with its prefix (``http://127.0.0.1:PORT/v2/<endpoint>``;
    ``emu.root_url`` is without it, and the public routes answer there too), ``emu.endpoint_id``
    the endpoint id, ``emu.headers`` the client's ``Authorization: Bearer <key>`` (empty without a
    key), ``emu.worker_env`` the ``RUNPOD_*`` variables that point a ``python -m worker serverless``
    subprocess at it (merge them into its environment), and ``emu.queue`` the ``RunpodQueue``
    (``emu.queue.stats`` counts taken jobs, stop signals delivered, discarded results). Keyword
    arguments go to ``loadtest.emulator.serve_emulator``: ``endpoint_id``, ``execution_timeout_s``,
    ``max_finished``, ``long_poll_s`` (how long an empty job-take is held; shorter makes a worker
    stop sooner). On exit held polls are released and the server stops; stop workers first.
    """
    from loadtest.emulator import serve_emulator

    return serve_emulator
