"""An async client for RunPod's job API, for a RunPod serverless endpoint or a burst-nli pod.

It imports neither torch nor transformers: install it alone with ``pip install ./client``
(docs/CLIENT.md). The job's view (``JobView``) and its statuses come from the wire contract the
server uses, ``schemas.runpod``.
"""

from burst_nli_client.client import (
    DEFAULT_RETRY,
    DEFAULT_TIMEOUTS,
    REFUSED_STATUSES,
    RETRY_STATUSES,
    RUNPOD_API_URL,
    RUNSYNC_WAIT_MS,
    Backoff,
    Client,
    ClientError,
    ConnectionFailed,
    HttpError,
    JobCancelled,
    JobError,
    JobFailed,
    JobTimedOut,
    NotFound,
    RetryPolicy,
    SubmissionUncertain,
    SubmittedJob,
    Timeouts,
    Unauthorized,
    WaitTimeout,
    error_code,
    raise_for_job,
)
from schemas.runpod import CANCELLED, COMPLETED, FAILED, FINAL_STATUSES, IN_PROGRESS, IN_QUEUE, TIMED_OUT, JobView

__all__ = [
    "CANCELLED",
    "COMPLETED",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUTS",
    "FAILED",
    "FINAL_STATUSES",
    "IN_PROGRESS",
    "IN_QUEUE",
    "REFUSED_STATUSES",
    "RETRY_STATUSES",
    "RUNPOD_API_URL",
    "RUNSYNC_WAIT_MS",
    "TIMED_OUT",
    "Backoff",
    "Client",
    "ClientError",
    "ConnectionFailed",
    "HttpError",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "JobTimedOut",
    "JobView",
    "NotFound",
    "RetryPolicy",
    "SubmissionUncertain",
    "SubmittedJob",
    "Timeouts",
    "Unauthorized",
    "WaitTimeout",
    "error_code",
    "raise_for_job",
]
