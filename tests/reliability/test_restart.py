"""Scenario 8, worker restart: ``python -m worker pod`` as a real process, SIGKILLed mid-burst and
started again on the same port, with callers on ``burst_nli_client``.

What a caller must do, and what this test holds the client and server to: the client retries
on its own what cannot create a duplicate (a refused connection, a 503 while the new process
loads its model); ``SubmissionUncertain`` (the request was sent, then the connection died) is the
caller's to resubmit. Pod mode keeps jobs in memory: a job the killed process held, queued,
running or finished but not yet read, is gone with it, and the new process answers 404 for its
id. A 404 for a job you have not seen end means exactly that: submit it again.
"""

from __future__ import annotations

from pathlib import Path

from loadtest import chaos
from worker.model import NliModel


async def test_a_killed_pod_loses_only_what_it_held_callers_resubmit_and_the_restarted_one_serves(
    tiny_model: NliModel, tmp_path: Path
) -> None:
    report = await chaos.worker_restart(tiny_model, jobs=150, jobs_per_s=25.0, log_dir=tmp_path)
    figures = report.figures
    logs = sorted(path.name for path in tmp_path.iterdir())
    assert chaos.healthy(report), (report.as_dict(), logs)
    assert report.ended == {"completed": 150}, report.ended  # every job, resubmitted or not, completed
    assert report.wrong == 0  # each with its own headlines' answers, not another job's
    assert logs == ["pod-1.log", "pod-2.log"]  # one kill, one restart
    # The process was killed holding at least the 640-pair job it had just accepted: the new one
    # answered 404 for it, and the caller submitted it again.
    assert figures["lost_with_worker"] >= 1
    assert figures["accepted_by_killed"] > figures["completed_before_kill"]
    # While it was down the client saw refused connections and retried them.
    assert figures["connection_errors_seen"] > 0
    assert figures["served_by_restarted"] > 0 and figures["serves_after"]
