"""``python -m loadtest burst``: a burst of classify jobs submitted at once, in process."""

from __future__ import annotations

import argparse
import json
import sys

import anyio

from loadtest.burst import report_dict, run_burst
from worker.logs import configure_logging
from worker.settings import Settings, SettingsError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="synthetic:distilbert-mnli",
                        help="model name (default: %(default)s, offline, random weights, real speed)")
    parser.add_argument("--jobs", type=int, default=339, help="jobs submitted at once (default: %(default)s, "
                        "the busiest news minute seen)")
    parser.add_argument("--idle-jobs", type=int, default=10, help="jobs timed one at a time first")
    parser.add_argument("--device", help="cuda, cpu, ... (default: CUDA when available)")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON here")
    parser.add_argument("--log-level", default="WARNING", help="worker log level (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    try:
        settings = Settings.from_env(model_name=args.model, device=args.device, log_level=args.log_level)
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = anyio.run(lambda: run_burst(settings, jobs=args.jobs, idle_jobs=args.idle_jobs))
    print(report.table())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report_dict(report), out, indent=2)
    return 1 if report.failed else 0
