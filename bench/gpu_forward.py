"""What one forward pass costs on the GPU host, apart from the batcher: two questions.

    python bench/gpu_forward.py --out bench/results          # on a GPU: under a minute
    python bench/gpu_forward.py --model synthetic:tiny --batches 4 --pairs 16   # a CPU smoke run

- **A new batch shape.** A batcher's batches come in hundreds of shapes (pairs × padded length).
  Forwards of batches never seen before, then the same batches again, with each attention
  backend of ``scaled_dot_product_attention`` allowed in turn: what a plan per shape costs.
  (``NliModel`` keeps cuDNN's backend off on CUDA for this; this script turns it back on to
  measure it.)
- **Beside a busy Python thread.** The same forward alone, then while another thread of the
  process runs Python (an event loop under load does), at two GIL switch intervals, and as one
  CUDA graph replay (GPU only): every op of an eager forward gives the GIL up and must get it back.

Writes ``gpu_forward.json`` under ``--out`` and prints one line a case.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.burst import classify_jobs  # noqa: E402
from worker.model import Collated, NliModel  # noqa: E402
from worker.pairs import PairTokens  # noqa: E402

LABELS = ("markets", "earnings", "mergers", "the economy", "crypto", "Apple")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synthetic:distilbert-mnli")
    parser.add_argument("--batches", type=int, default=40, help="batches a case (40)")
    parser.add_argument("--pairs", type=int, default=512, help="the largest batch, in pairs (512)")
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def headline_pairs(model: NliModel, count: int) -> list[PairTokens]:
    """Real headlines against label hypotheses, sorted by length as the batch policy takes them."""
    hypotheses = [model.encode_text(f"This example is about {label}.") for label in LABELS]
    premises = model.encode_texts([job["headline"] for job in classify_jobs(count)])
    pairs = (model.pair(ids, hypotheses[i % len(hypotheses)]) for i, ids in enumerate(premises))
    return sorted(pairs, key=lambda pair: pair.length)


def new_batches(model: NliModel, pairs: list[PairTokens], count: int, largest: int, seed: int) -> list[Collated]:
    """``count`` batches of a run of neighbouring pairs each; the batch sizes of different seeds
    never meet (sizes ≡ seed mod 7), so each seed's shapes are new to the process."""
    rng, smallest = random.Random(seed), max(1, largest * 3 // 10)
    sizes = [size for size in range(smallest, largest + 1) if size % 7 == seed % 7] or [largest]
    batches = []
    for _ in range(count):
        size = rng.choice(sizes)
        start = rng.randrange(0, len(pairs) - size)
        batches.append(model.collate(pairs[start : start + size]))
    return batches


def timed(model: NliModel, batches: list[Collated]) -> dict:
    times = [_ms(lambda batch=batch: model.run(batch)) for batch in batches]
    return _summary(times, shapes=len({tuple(b.input_ids.shape) for b in batches}))


def _summary(times_ms: list[float], *, shapes: int) -> dict:
    ordered = sorted(times_ms)
    return {"batches": len(ordered), "shapes": shapes, "median_ms": round(ordered[len(ordered) // 2], 2),
            "mean_ms": round(sum(ordered) / len(ordered), 2)}


def _ms(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


@contextmanager
def attention_backends(*, cudnn: bool, efficient: bool = True) -> Iterator[None]:
    cuda = torch.backends.cuda
    before = cuda.cudnn_sdp_enabled(), cuda.mem_efficient_sdp_enabled()
    cuda.enable_cudnn_sdp(cudnn)
    cuda.enable_mem_efficient_sdp(efficient)
    try:
        yield
    finally:
        cuda.enable_cudnn_sdp(before[0])
        cuda.enable_mem_efficient_sdp(before[1])


def shape_cases(model: NliModel, pairs: list[PairTokens], count: int, largest: int) -> Iterator[dict]:
    for seed, (name, cudnn, efficient) in enumerate([
        ("cuDNN allowed (torch's default)", True, True),
        ("cuDNN off (burst-nli's setting)", False, True),
        ("flash and math only", False, False),
    ]):  # fmt: skip
        with attention_backends(cudnn=cudnn, efficient=efficient):
            batches = new_batches(model, pairs, count, largest, seed)
            yield {"case": f"{name}: new shapes", **timed(model, batches)}
            yield {"case": f"{name}: the same batches again", **timed(model, batches)}


@contextmanager
def busy_thread(switch_interval_s: float) -> Iterator[None]:
    """Another thread running Python the whole time, at this GIL switch interval."""
    stop, before = threading.Event(), sys.getswitchinterval()

    def spin() -> None:
        while not stop.is_set():
            sum(range(200))

    sys.setswitchinterval(switch_interval_s)
    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(before)


def busy_cases(model: NliModel, pairs: list[PairTokens], count: int, largest: int) -> Iterator[dict]:
    batch = model.collate(pairs[:largest])
    repeats = [batch] * count
    timed(model, repeats[:3])  # warm the shape
    yield {"case": "alone", **timed(model, repeats)}
    for interval_s in (0.005, 0.0005):
        with busy_thread(interval_s):
            yield {"case": f"beside a busy thread, switch interval {interval_s * 1000:g} ms", **timed(model, repeats)}
    if model.device.type == "cuda":
        replay = cuda_graph(model, batch)
        for name, context in (("alone", None), ("beside a busy thread, 5 ms", 0.005)):
            with busy_thread(context) if context else nullcontext():
                times = [_ms(replay) for _ in range(count)]
            yield {"case": f"one CUDA graph replay, {name}", **_summary(times, shapes=1)}


def cuda_graph(model: NliModel, batch: Collated) -> Callable[[], object]:
    """The forward of this one batch captured as a CUDA graph; the replay copies its logits out."""
    ids, mask = batch.input_ids.to(model.device), batch.attention_mask.to(model.device)
    with torch.inference_mode():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                model.model(input_ids=ids, attention_mask=mask)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = model.model(input_ids=ids, attention_mask=mask).logits.float()
    return lambda: (graph.replay(), logits.cpu())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model = NliModel.load(args.model)
    pairs = headline_pairs(model, max(1200, args.pairs * 2))
    model.warm_up(max_len=128, batch_pairs=8)
    print(f"{model.name} on {model.device} {model.dtype}, torch {torch.__version__}", flush=True)
    results = []
    for group, cases in (("a new batch shape", shape_cases), ("beside a busy thread", busy_cases)):
        for result in cases(model, pairs, args.batches, args.pairs):
            results.append({"group": group, **result})
            print(json.dumps(results[-1]), flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        info = {"model": model.name, "device": str(model.device), "torch": torch.__version__}
        (args.out / "gpu_forward.json").write_text(json.dumps({"machine": info, "cases": results}, indent=2))


if __name__ == "__main__":
    main()
