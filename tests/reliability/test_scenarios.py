"""Reliability scenarios in process: every job ends exactly once, nothing is lost or hangs, and
the worker still serves afterwards (figures: ``python -m loadtest chaos``, RELIABILITY.md)."""

from __future__ import annotations

import pytest

from loadtest import chaos
from worker.model import NliModel


def assert_accounted(report: chaos.ScenarioReport) -> None:
    """The invariant every scenario shares."""
    assert report.lost == 0 and report.hung == 0 and report.double_ended == 0, report.as_dict()
    assert report.wrong == 0, "a completed job's output differs from the same job run alone"
    assert report.figures["serves_after"] and report.figures["queue_empty_after"], report.figures


async def test_cancel_storm_cancels_only_the_cancelled_and_the_rest_are_right(tiny_model: NliModel) -> None:
    report = await chaos.cancel_storm(tiny_model, jobs=1000)
    assert_accounted(report)
    assert set(report.ended) <= {"completed", "cancelled"}
    assert report.ended["completed"] >= 500  # only half were ever asked to cancel
    assert report.ended["cancelled"] > 0 and report.figures["pairs_dropped_before_compute"] > 0


async def test_a_poison_pair_fails_only_its_own_job(tiny_model: NliModel) -> None:
    report = await chaos.poison_pair(tiny_model, jobs=200)
    assert_accounted(report)
    assert report.ended == {"completed": 199, "inference_failed": 1}
    assert report.figures["poisoned_job_state"] == "inference_failed"
    assert report.figures["batch_splits"] > 0


async def test_out_of_memory_splits_shrinks_and_recovers_without_failing_a_job(tiny_model: NliModel) -> None:
    report = await chaos.out_of_memory(tiny_model, jobs=200)
    assert_accounted(report)
    assert report.ended == {"completed": 200}
    figures = report.figures
    assert figures["budget_shrinks"] > 0 and figures["budget_tokens_shrunk"] < figures["budget_tokens_policy"]
    assert figures["budget_tokens_recovered"] == figures["budget_tokens_policy"]


async def test_expired_jobs_time_out_and_their_pairs_never_reach_the_model(tiny_model: NliModel) -> None:
    report = await chaos.deadlines(tiny_model, jobs=50)
    assert_accounted(report)
    assert report.ended == {"timed_out": 50}
    assert report.figures["pairs_of_expired_jobs_computed"] == 0


@pytest.mark.parametrize("factor", [2.0])
async def test_overload_is_refused_at_admission_and_admitted_jobs_complete(tiny_model: NliModel, factor) -> None:
    report = await chaos.overload(tiny_model, seconds=1.0, factor=factor)
    assert_accounted(report)
    assert set(report.ended) == {"completed", "rejected"}, report.ended
    assert report.ended["rejected"] > 0
