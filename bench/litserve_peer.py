"""The LitServe peer: the same model and the same job operations behind LitServe's own batching.

    python -m bench.litserve_peer --model synthetic:distilbert-mnli --port 8011   # from the repo root

What a careful LitServe user would write: LitServe groups up to ``--max-batch-size`` requests
that arrive within ``--batch-timeout`` seconds; ``predict`` tokenizes every pair of the group with
the model's tokenizer (padding to the longest, no length sorting) and runs one forward pass. Jobs
are planned and aggregated by burst-nli's own operations, so both servers answer the same job with
the same work and the same result; only the batching differs. Needs the ``peers`` extra.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

import litserve as ls
import msgspec
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas import Limits, build_job_schema  # noqa: E402
from worker.model import NliModel  # noqa: E402
from worker.operations import Plan, plan_job  # noqa: E402


class NliPeerApi(ls.LitAPI):
    """decode: a job input becomes its plan; predict: one forward over the group's pairs."""

    def __init__(self, model_name: str, dtype: str | None, *, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.model_name = model_name
        self.dtype = dtype

    def setup(self, device: str) -> None:
        self.nli = NliModel.load(self.model_name, device=device, dtype=self.dtype)
        self.schema = build_job_schema(Limits())
        accepted = inspect.signature(self.nli.model.forward).parameters
        self.input_names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in accepted]

    def decode_request(self, request, **kwargs: Any) -> Plan:  # type: ignore[no-untyped-def]
        # No annotation on ``request``: LitServe reads it to type its endpoint, and without one it
        # hands over the JSON body as parsed.
        return plan_job(self.schema.decode_input(request), self.nli)

    def batch(self, inputs: list[Plan]) -> list[Plan]:
        return inputs

    def predict(self, plans: list[Plan], **kwargs: Any) -> list[Any]:
        pairs = [pair for plan in plans for pair in plan.pairs]
        encoded = self.nli.tokenizer(
            [premise for premise, _ in pairs], [hypothesis for _, hypothesis in pairs],
            padding=True, truncation="only_first", max_length=self.nli.max_length, return_tensors="pt",
        )  # fmt: skip
        with torch.inference_mode():
            inputs = {name: encoded[name].to(self.nli.device) for name in self.input_names}
            logits = self.nli.model(**inputs).logits.float().cpu().numpy()
        bounds = np.cumsum([0, *(len(plan.pairs) for plan in plans)]).tolist()
        return [plan.aggregate(logits[a:b]) for plan, a, b in zip(plans, bounds, bounds[1:], strict=False)]

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output: Any, **kwargs: Any) -> Any:
        return msgspec.to_builtins(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synthetic:distilbert-mnli")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    parser.add_argument("--dtype", default=None, help="default: float16 on CUDA, float32 on CPU")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout", type=float, default=0.002, help="seconds")
    args = parser.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    api = NliPeerApi(args.model, args.dtype, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cuda" if device.startswith("cuda") else "cpu", devices=1,
                          workers_per_device=1, timeout=3600)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False,
               num_api_servers=1)


if __name__ == "__main__":
    main()
