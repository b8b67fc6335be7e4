"""Scenario 13, process restarts: a pod of two front processes and a model process
(``--front-processes 2``), its model process and then a front SIGKILLed mid-load and started again
by the pod's supervisor, with callers on ``burst_nli_client``.

What a caller must do beyond scenario 8's: a job that ends FAILED ``unavailable`` was in flight
when the model process died (the error says so) and is the caller's to resubmit. The pod keeps
one port throughout; a front that dies takes only its own jobs.
"""

from __future__ import annotations

from pathlib import Path

from loadtest import chaos
from worker.model import NliModel


async def test_a_killed_model_process_or_front_loses_only_what_it_held_and_is_started_again(
    tiny_model: NliModel, tmp_path: Path
) -> None:
    report = await chaos.process_restarts(tiny_model, jobs=150, jobs_per_s=25.0, log_dir=tmp_path)
    figures = report.figures
    assert chaos.healthy(report), report.as_dict()
    assert report.ended == {"completed": 150}, report.ended  # every job, resubmitted or not, completed
    assert report.wrong == 0  # each with its own headlines' answers, not another job's
    assert figures["model_killed"] == figures["front_killed"] == 1
    assert figures["restarts_logged"] == 2  # the supervisor saw both die and started them again
    # The model process died holding at least the 640-pair job the pod had just accepted: it
    # ended FAILED unavailable, and the caller submitted it again.
    assert figures["failed_unavailable_resubmitted"] >= 1
    assert figures["serves_after"] and figures["queue_empty_after"]
