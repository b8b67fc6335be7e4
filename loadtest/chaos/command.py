"""``python -m loadtest chaos``: every scenario (or ``--only`` some), a Markdown table, JSON."""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc

from loadtest.chaos.inproc import cancel_storm, deadlines, out_of_memory, overload, poison_pair
from loadtest.chaos.ledger import ScenarioReport, healthy, table
from loadtest.chaos.loopback import http_overload, soak
from loadtest.chaos.processes import process_restarts, soak_processes
from loadtest.chaos.restart import worker_restart
from worker.model import NliModel

SCENARIOS: dict[str, Callable[[NliModel], Awaitable[ScenarioReport]]] = {
    "cancel-storm": cancel_storm,
    "poison": poison_pair,
    "oom": out_of_memory,
    "deadlines": deadlines,
    "overload": overload,
    "http-overload": http_overload,
    "soak": soak,
    "restart": worker_restart,
    "process-restarts": process_restarts,
    "soak-processes": soak_processes,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="synthetic:tiny", help="model (default: %(default)s)")
    parser.add_argument("--only", choices=list(SCENARIOS), action="append", help="run only these scenarios")
    parser.add_argument("--json", metavar="PATH", help="also write the reports as JSON here")
    parser.add_argument("--soak-seconds", type=float, default=120.0, metavar="S",
                        help="how long the soak's load runs (default: %(default)s)")
    parser.add_argument("--log-level", default="ERROR", help="worker log level (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from worker.logs import configure_logging

    configure_logging(args.log_level)
    model = NliModel.load(args.model, device="cpu")
    names = args.only or list(SCENARIOS)
    scenarios = {**SCENARIOS, "soak": functools.partial(soak, seconds=args.soak_seconds),
                 "soak-processes": functools.partial(soak_processes, seconds=args.soak_seconds)}  # fmt: skip

    async def main() -> list[ScenarioReport]:
        return [await scenarios[name](model) for name in names]

    reports = anyio.run(main)
    print(table(reports))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump([report.as_dict() for report in reports], out, indent=2)
    return 0 if all(healthy(report) for report in reports) else 1
