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
        "Settings come from environment variables (see docs/SETTINGS.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serverless = commands.add_parser(
        "serverless",
        help="run as a RunPod serverless worker (the SDK's --test_input and --rp_serve_api work too)",
    )
    serverless.add_argument(
        "--model-process",
        action="store_true",
        help="run the model in a process of its own beside the SDK's loop, started again if it dies "
        "(docs/PROCESSES.md); default: one process does everything",
    )
    pod = commands.add_parser("pod", help="serve the RunPod job API over HTTP, always on (see docs/API.md)")
    pod.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    pod.add_argument("--port", type=int, help="port to bind (default: $PORT, else 8000)")
    pod.add_argument(
        "--insecure",
        action="store_true",
        help="allow binding beyond loopback without API_KEY (anyone who can reach the port can submit jobs)",
    )
    pod.add_argument("--record", metavar="PATH", help="append every accepted job to this load-test trace file")
    pod.add_argument(
        "--front-processes",
        type=_positive,
        metavar="N",
        help="serve HTTP from N processes sharing the port, and the model from one more (docs/PROCESSES.md); "
        "default: one process does everything",
    )
    front = commands.add_parser(
        "pod-front", help="one front process of `pod --front-processes N` (that command starts them; not by hand)"
    )
    front.add_argument("--front", type=int, required=True)
    front.add_argument("--fronts", type=int, required=True)
    front.add_argument("--run-dir", required=True)
    front.add_argument("--fds", required=True, help="the pod's listening sockets, inherited")
    front.add_argument("--health-port", type=int)
    front.add_argument("--record", metavar="PATH")
    model_process = commands.add_parser(
        "model-process",
        help="serve the model to front processes on a Unix socket (docs/PROCESSES.md; not a front end)",
    )
    model_process.add_argument("--socket", required=True, metavar="PATH", help="the Unix socket to listen on")
    bake = commands.add_parser(
        "bake-model", help="download (or build) a model and tokenizer into a directory and check they load"
    )
    bake.add_argument("--model", required=True, help="Hugging Face id, local directory or synthetic:NAME")
    bake.add_argument("--out", required=True, help="directory to write; MODEL_NAME can point at it")
    args, sdk_args = parser.parse_known_args(argv)  # the runpod SDK reads its own flags from sys.argv
    if args.command != "serverless" and sdk_args:
        parser.error(f"unrecognized arguments: {' '.join(sdk_args)}")
    if args.command == "bake-model":
        from worker.bake import bake_model_command

        return bake_model_command(args.model, args.out)

    try:
        settings = Settings.from_env()
    except SettingsError as err:
        print(f"error: bad setting: {err}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if args.command == "serverless":
        from worker.serverless import start

        start(settings, model_process=args.model_process)
    elif args.command == "model-process":
        from worker.split.model_process import run

        return run(settings, args.socket)
    elif args.command == "pod" and args.front_processes:
        from worker.pod.fronts import serve_fronts

        return serve_fronts(settings, host=args.host, port=args.port, fronts=args.front_processes,
                            insecure=args.insecure, record=args.record)  # fmt: skip
    elif args.command == "pod":
        from worker.pod import serve

        return serve(settings, host=args.host, port=args.port, insecure=args.insecure, record=args.record)
    elif args.command == "pod-front":
        from worker.pod.fronts import serve_front

        fds = [int(fd) for fd in args.fds.split(",")]
        return serve_front(settings, front=args.front, fronts=args.fronts, run_dir=args.run_dir, fds=fds,
                           health_port=args.health_port, record=args.record)  # fmt: skip
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
