"""A generic async micro-batcher: jobs submit items with costs; one loop batches them for a runner.

Knows nothing of models, HTTP or RunPod: only items, their costs and a runner that collates and
runs a batch.
"""

from batching.batcher import Batcher, Runner, Ticket, clock
from batching.errors import (
    DeadlineExceeded,
    InferenceFailed,
    InvalidInput,
    Overloaded,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from batching.policy import BatchPolicy, padded_length, select_batch
from batching.stats import BatchStats, EngineStats

__all__ = [
    "BatchPolicy",
    "BatchStats",
    "Batcher",
    "DeadlineExceeded",
    "EngineStats",
    "InferenceFailed",
    "InvalidInput",
    "Overloaded",
    "ResourceExhausted",
    "Runner",
    "ServiceError",
    "Ticket",
    "Unavailable",
    "clock",
    "padded_length",
    "select_batch",
]
