"""What refusing an oversized body costs the event loop, against reading its JSON at all.

    python bench/refusal.py --repeats 21

A pod decodes every body on its one event loop, so a body it must refuse should cost about what
parsing it does, not the per-text work of everything in it. Three bodies, each timed through the
pod's own way in (``decode_run_request``, then the job schema's ``decode_json``; the median of
``--repeats``), beside ``msgspec.json.decode`` of the same bytes into plain Python objects (the
least any server does with them), in the same run:
- a ``classify_batch`` of 250,000 one-character headlines (1 MB, over the list's limit of 128);
- 500 headlines of 2,000 characters (1 MB, over the list's limit too);
- a valid 128-headline ``classify_batch``, for scale.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batching import InvalidInput  # noqa: E402
from bench.common import cpu_model, publish  # noqa: E402
from loadtest.burst import classify_jobs  # noqa: E402
from schemas import DEFAULT_SCHEMA  # noqa: E402
from schemas.runpod import decode_run_request  # noqa: E402


def bodies() -> dict[str, bytes]:
    valid = [job["headline"] for job in classify_jobs(128)]
    return {
        "250,000 one-character headlines (refused)": _body(["a"] * 250_000),
        "500 headlines of 2,000 characters (refused)": _body(["b" * 2000] * 500),
        "128 real headlines (valid)": _body(valid),
    }


def _body(headlines: list[str]) -> bytes:
    return msgspec.json.encode({"input": {"operation": "classify_batch", "headlines": headlines}})


def pod_way(body: bytes) -> str:
    """What the pod does with a ``/run`` body before any job exists; how it ended."""
    try:
        DEFAULT_SCHEMA.decode_json(decode_run_request(body).input)
    except InvalidInput as err:
        return str(err)[:80]
    return "accepted"


def median_us(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for name, body in bodies().items():
        parsed = median_us(lambda: msgspec.json.decode(body), args.repeats)
        pod = median_us(lambda: pod_way(body), args.repeats)
        rows.append({"body": name, "bytes": len(body), "json_us": parsed, "pod_us": pod, "answer": pod_way(body)})
    lines = ["| body | bytes | plain JSON parse µs | the pod's way µs | × the parse | answer |", "|" + "---|" * 6]
    for row in rows:
        lines.append(f"| {row['body']} | {row['bytes']:,} | {row['json_us']:,.0f} | {row['pod_us']:,.0f} "
                     f"| {row['pod_us'] / row['json_us']:.1f} | {row['answer']} |")  # fmt: skip
    header = f"host {cpu_model()}; median of {args.repeats} a body, one thread"
    publish(args.out, "refusal", header, "\n".join(lines), {"rows": rows})


if __name__ == "__main__":
    main()
