"""``python -m worker``: the worker's entry points."""

from __future__ import annotations

import argparse
import sys

from worker.logs import configure_logging
from worker.settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker",
        description="burst-nli: zero-shot NLI for bursts of financial-news jobs. "
        "Settings come from environment variables (see README.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "serverless",
        help="run as a RunPod serverless worker (the SDK's --test_input and --rp_serve_api work too)",
    )
    args, _sdk_args = parser.parse_known_args(argv)  # the runpod SDK reads its own flags from sys.argv

    try:
        settings = Settings.from_env()
    except SettingsError as err:
        print(f"error: bad setting: {err}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if args.command == "serverless":
        from worker.serverless import start

        start(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
