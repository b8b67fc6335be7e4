"""``python -m worker bake-model``: put a model and its tokenizer in a directory, and prove they load.

Images bake their weights at build time and run with ``HF_HUB_OFFLINE=1``, so a model that is
missing a file, or cannot be read back, must fail the build rather than the first job. The
directory is written under a temporary name beside ``--out``, loaded back with ``NliModel.load``
(the worker's own loader) and given one pair; only then is it renamed to ``--out``, so a failed
bake never leaves a directory that looks baked.

``--model`` is a Hugging Face id (``org/name``, optionally ``org/name@revision`` to pin a commit),
a local directory, or ``synthetic:NAME`` (built offline with random weights). Downloads go
through the usual Hugging Face cache (``HF_HOME``), which a Docker build can mount as a cache.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "bake.json"
"""Written into the baked directory: where the model came from, for whoever inspects an image."""
CHECK_PAIR = ("Apple Declares $0.25 Dividend", "This example is about a dividend.")
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "spm.model", "sentencepiece.bpe.model", "vocab.json")


class BakeError(Exception):
    """The model could not be fetched, written or read back; the message says which and why."""


@dataclasses.dataclass(frozen=True, slots=True)
class BakeReport:
    """What a checked model directory holds, and what one pair through it gave."""

    path: Path
    architecture: str
    labels: tuple[str, ...]
    files: int
    size_bytes: int
    logits: tuple[float, ...]

    def summary(self) -> str:
        size_mb = self.size_bytes / 1_000_000
        logits = ", ".join(f"{x:.4f}" for x in self.logits)
        return (
            f"{self.architecture}, labels {', '.join(self.labels)}, {self.files} files, {size_mb:.1f} MB; "
            f"one pair on cpu gave logits [{logits}]"
        )


def bake_model_command(model: str, out: str) -> int:
    """The CLI: bake, print one summary line, and return the exit status (never 0 on a failure)."""
    try:
        report = bake_model(model, Path(out))
    except BakeError as err:
        print(f"bake-model: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - anything unforeseen still fails loudly, with its traceback
        traceback.print_exc()
        print(f"bake-model: error: unexpected {type(err).__name__} while baking {model!r}: {err}", file=sys.stderr)
        return 1
    print(f"bake-model: baked {model} into {report.path}: {report.summary()}")
    return 0


def bake_model(model: str, out: Path) -> BakeReport:
    """Fetch or build ``model`` into ``out``, then check it loads and runs; raise BakeError if not."""
    out = out.expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BakeError(f"--out {out} already exists and is not an empty directory: remove it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        tokenizer, network, source = _fetch(model)
        try:
            tokenizer.save_pretrained(staging)
            network.save_pretrained(staging)
        except Exception as err:
            raise BakeError(f"could not write {model!r} to {out.parent}: {type(err).__name__}: {err}") from err
        (staging / MANIFEST).write_text(json.dumps(_manifest(model, source), indent=2) + "\n", encoding="utf-8")
        report = check_model_dir(staging)
        if out.exists():
            out.rmdir()  # empty, checked above
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dataclasses.replace(report, path=out)


def check_model_dir(path: Path) -> BakeReport:
    """Check a model directory has its files, loads with the worker's loader and runs one pair."""
    from worker.model import NliModel

    if not path.is_dir():
        raise BakeError(f"{path} is not a directory")
    files = [p for p in path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    if "config.json" not in names:
        raise BakeError(f"{path} has no config.json: not a saved transformers model")
    if not any(p.match(pattern) for p in files for pattern in _WEIGHT_PATTERNS):
        raise BakeError(f"{path} has no weights (model.safetensors or pytorch_model.bin)")
    if "tokenizer_config.json" not in names or not names & set(_TOKENIZER_FILES):
        raise BakeError(f"{path} has no tokenizer (tokenizer_config.json and tokenizer.json or a vocabulary)")
    try:
        loaded = NliModel.load(str(path), device="cpu")
    except Exception as err:
        raise BakeError(f"{path} does not load: {type(err).__name__}: {err}") from err
    try:
        premise, hypothesis = CHECK_PAIR
        pair = loaded.pair(loaded.encode_text(premise), loaded.hypothesis_ids(hypothesis))
        logits = loaded.run(loaded.collate([pair]))
    except Exception as err:
        raise BakeError(f"{path} loads but a pair through it fails: {type(err).__name__}: {err}") from err
    if logits.shape != (1, len(loaded.labels)) or not np.isfinite(logits).all():
        raise BakeError(f"{path} gave bad logits for a test pair: shape {logits.shape}, values {logits.tolist()}")
    return BakeReport(
        path=path,
        architecture=type(loaded.model).__name__,
        labels=loaded.labels,
        files=len(files),
        size_bytes=sum(p.stat().st_size for p in files),
        logits=tuple(float(x) for x in logits[0]),
    )


def _fetch(model: str) -> tuple[Any, Any, dict[str, str | None]]:
    """(tokenizer, model, source) for a synthetic name, a local directory or a Hub id."""
    from worker.synthetic import build_synthetic

    if model.startswith("synthetic:"):
        try:
            tokenizer, network = build_synthetic(model)
        except ValueError as err:
            raise BakeError(str(err)) from err
        return tokenizer, network, {"kind": "synthetic", "revision": None}
    if model.startswith(("/", ".", "~")) or os.path.isdir(model):
        local = Path(model).expanduser()
        if not local.is_dir():
            raise BakeError(f"--model {model}: no such directory")
        check_model_dir(local)  # a clear message for a broken source, before copying it
        tokenizer, network = _from_pretrained(str(local), None, where=f"local directory {local}")
        return tokenizer, network, {"kind": "local", "revision": None}
    name, _, revision = model.partition("@")
    where = f"Hugging Face model {name!r}" + (f" at revision {revision!r}" if revision else "")
    tokenizer, network = _from_pretrained(name, revision or None, where=where)
    return tokenizer, network, {"kind": "hub", "revision": revision or None}


def _from_pretrained(name: str, revision: str | None, *, where: str) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
        network = AutoModelForSequenceClassification.from_pretrained(name, revision=revision)
    except Exception as err:
        reason = str(err).strip().rstrip(".")
        hint = ""
        if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0"):
            hint = " (HF_HUB_OFFLINE is set: only the local cache was searched)"
        raise BakeError(
            f"could not fetch the {where}{hint}: {type(err).__name__}: {reason}. Check the name, the "
            "network, and a token (HF_TOKEN or HF_TOKEN_PATH) for gated or private models"
        ) from err
    return tokenizer, network


def _manifest(model: str, source: dict[str, str | None]) -> dict[str, Any]:
    import torch
    import transformers

    return {"model": model, **source, "torch": torch.__version__, "transformers": transformers.__version__}
