"""``python -m loadtest``: generate, replay and emulate: drive the worker with bursts of jobs.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int`` (the exit status); this file only dispatches, importing just the one asked for.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "burst": ("loadtest.burst_command", "submit a burst of classify jobs at once to an in-process engine"),
    "generate": ("loadtest.generate", "write a burst trace shaped like the news feed"),
    "replay": ("loadtest.replay", "replay a trace against the worker in process, a pod, or a RunPod endpoint"),
    "emulate-runpod": ("loadtest.emulator", "run a local stand-in for RunPod's queue that real workers poll"),
    "plan": ("loadtest.planner", "simulate a RunPod fleet over a trace: p99 latency and cost per setting"),
    "chaos": ("loadtest.chaos", "run the reliability scenarios (faults, cancellations, overload) and report"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
