"""Reliability scenarios: faults, cancellations, overload, deadlines, soak and a worker restart.

One module a harness: ``inproc`` drives ``NliEngine`` through the service path with faults
injected, ``loopback`` drives the pod server on a loopback port in this process (overload, soak),
``restart`` kills a ``python -m worker pod`` process and starts it again, ``processes`` kills the
model process and a front of a pod of several (``--front-processes``), which its supervisor
starts again, and soaks such a pod. ``ledger`` holds what
they share: each returns a ``ScenarioReport`` that accounts for every submitted job, and
``healthy`` says whether any was lost, hung, double-ended or wrong. The tests in
``tests/reliability`` assert on these reports; ``python -m loadtest chaos`` (``command``) prints
them (the figures in RELIABILITY.md).
"""

from loadtest.chaos.command import SCENARIOS, add_arguments, run
from loadtest.chaos.inproc import cancel_storm, deadlines, out_of_memory, overload, poison_pair
from loadtest.chaos.ledger import ScenarioReport, healthy, table
from loadtest.chaos.loopback import RSS_TOLERANCE_MB, http_overload, soak, soak_flatness
from loadtest.chaos.processes import process_restarts, soak_processes
from loadtest.chaos.restart import worker_restart

__all__ = [
    "RSS_TOLERANCE_MB",
    "SCENARIOS",
    "ScenarioReport",
    "add_arguments",
    "cancel_storm",
    "deadlines",
    "healthy",
    "http_overload",
    "out_of_memory",
    "overload",
    "poison_pair",
    "process_restarts",
    "run",
    "soak",
    "soak_flatness",
    "soak_processes",
    "table",
    "worker_restart",
]
