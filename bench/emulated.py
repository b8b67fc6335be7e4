"""A model whose forward pass is emulated: the real host path around a GPU that is not here.

Everything burst-nli does on the CPU (decode, plan, tokenize, queue, cut, collate, fan out,
aggregate, HTTP) runs as shipped; only ``NliModel.run`` is replaced. It returns zeros after:
- ``free``: nothing at all, the host path's own ceiling;
- ``h100``: as long as DistilBERT-MNLI's fp16 forward took on an H100 (docs/MEASUREMENTS.md: 13.6k,
  33k and 59.6k pairs/s at batches of 64, 256 and 1,024), fitted as ``H100_FIXED_S`` plus
  ``H100_PER_TOKEN_S`` a padded token (within 12% of all three points). It sleeps, releasing the
  GIL as a thread waiting on CUDA does: once, the kind case;
- ``h100-eager``: as long, but launched as an eager forward is: ``EAGER_OPS`` steps of Python
  work, each giving the GIL up and taking it back as an op's launch does, then the wait. Beside a
  thread running Python each step waits for the GIL, as a real forward did on an H200
  (BENCHMARKS.md, "One forward's cost"), so the interpreter lock's cost shows on a CPU.

    python -m bench.emulated --forward h100 --port 8000    # the pod, serving on loopback
    python -m bench.emulated --forward h100 --port 8000 --front-processes 2  # a pod of 2 fronts
    python -m bench.emulated --forward h100 --socket PATH  # a split worker's model process
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import anyio
import numpy as np

from worker.model import GPU_LENGTH_MULTIPLE, Collated, NliModel
from worker.settings import Settings

H100_FIXED_S = 4.0e-3
H100_PER_TOKEN_S = 0.2e-6
FORWARDS: dict[str, Callable[[Collated], float]] = {
    "free": lambda batch: 0.0,
    "h100": lambda batch: H100_FIXED_S + H100_PER_TOKEN_S * batch.padded_tokens,
    "h100-eager": lambda batch: H100_FIXED_S + H100_PER_TOKEN_S * batch.padded_tokens,
}
EAGER_OPS = 50
"""Steps of the ``h100-eager`` launch: DistilBERT's forward launches about a hundred ops; a step
here costs about two of them (``time.sleep(0)`` gives the GIL up for a system call)."""
EAGER_STEP_PYTHON_S = 20e-6
"""Python work a step, the GIL held: a module call's bookkeeping."""


class EmulatedModel(NliModel):
    """``NliModel`` with ``run`` replaced by a wait of ``forward(batch)`` seconds."""

    forward: Callable[[Collated], float] = staticmethod(FORWARDS["free"])  # emulated() sets the one named
    eager_ops: int = 0

    def run(self, batch: Collated) -> np.ndarray:
        started = time.perf_counter()
        for _ in range(self.eager_ops):
            _run_python(EAGER_STEP_PYTHON_S)
            time.sleep(0)  # an op's launch: the GIL given up, then waited for
        seconds = self.forward(batch) - (time.perf_counter() - started)
        if seconds > 0:
            time.sleep(seconds)
        return np.zeros((batch.n_pairs, len(self.labels)), dtype=np.float32)


def _run_python(seconds: float) -> None:
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def emulated(model: NliModel, forward: str) -> EmulatedModel:
    """The same tokenizer, template and limits as ``model``, with the ``forward`` named."""
    wrapped = EmulatedModel(model.name, model.tokenizer, model.model)
    wrapped.forward = FORWARDS[forward]
    wrapped.eager_ops = EAGER_OPS if forward.endswith("-eager") else 0
    wrapped.length_multiple = GPU_LENGTH_MULTIPLE  # pads as the GPU it emulates does
    return wrapped


async def _serve(settings: Settings, forward: str, port: int) -> None:
    from worker.pod import running_server

    model = emulated(NliModel.load(settings.model_name, device="cpu"), forward)
    async with running_server(settings, model=model, port=port):
        await anyio.sleep_forever()


def main() -> None:
    from worker.logs import configure_logging

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--forward", choices=sorted(FORWARDS), default="h100")
    parser.add_argument("--model", default="synthetic:distilbert-mnli", help="its tokenizer and limits are used")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int, help="serve the pod on this loopback port")
    where.add_argument("--socket", help="serve as a model process on this Unix socket")
    parser.add_argument("--front-processes", type=int, help="with --port: a pod of this many fronts and a model process")
    args = parser.parse_args()
    configure_logging("WARNING")
    settings = gpu_policy(Settings.from_env(model_name=args.model, device="cpu", log_level="WARNING"))
    if args.front_processes:
        from worker.pod.fronts import serve_fronts

        # The fronts read their settings from the environment: the same model and batch budget.
        os.environ.update(MODEL_NAME=args.model, DEVICE="cpu", LOG_LEVEL="WARNING",
                          MAX_BATCH_TOKENS=str(settings.max_batch_tokens), MAX_BATCH_PAIRS=str(settings.max_batch_pairs))
        model_process = [sys.executable, "-m", "bench.emulated", "--forward", args.forward, "--model", args.model]
        raise SystemExit(serve_fronts(settings, host="127.0.0.1", port=args.port, fronts=args.front_processes,
                                      model_command=model_process))
    if args.socket:
        from worker.split.model_process import run

        raise SystemExit(run(settings, args.socket, model=emulated(NliModel.load(settings.model_name, device="cpu"),
                                                                     args.forward)))
    else:
        anyio.run(_serve, settings, args.forward, args.port)


def gpu_policy(settings: Settings) -> Settings:
    """The settings with the GPU's batch budget (16,384 tokens, 512 pairs) where none is set:
    the emulated model sits on the CPU, where the engine would otherwise pick the CPU's."""
    import msgspec

    policy = settings.batch_policy(on_gpu=True)
    return msgspec.structs.replace(
        settings, max_batch_tokens=policy.max_batch_tokens, max_batch_pairs=policy.max_batch_items
    )


if __name__ == "__main__":
    main()
