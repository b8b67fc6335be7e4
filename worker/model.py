"""The NLI model runner: device and dtype, loading, GPU-friendly collation and the forward pass.

The batcher calls two methods and nothing else: ``collate`` (in a collate thread, so batch N+1 is
built while batch N runs) and ``run`` (in the one model thread). Everything before that, premise
and hypothesis tokenization, happens once per job in the front end, so pairs travel as token ids
and their cost (``PairTokens.length``) is known before they are queued. How pairs are laid out is
``worker/pairs.py``; the synthetic models are ``worker/synthetic.py``.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from batching.errors import ResourceExhausted
from batching.policy import padded_length
from worker.pairs import PROBES, PairLayout, PairTokens, probe_pair_template
from worker.synthetic import build_synthetic


_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
# Used when neither the tokenizer nor the config states a usable limit.
_DEFAULT_MAX_LENGTH = 512


@dataclass(frozen=True, slots=True)
class Collated:
    """A padded batch ready for ``run``: CPU tensors (pinned on CUDA) plus its accounting."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    n_pairs: int
    padded_len: int
    real_tokens: int  # sum of the pairs' lengths, for padding-efficiency metrics

    @property
    def padded_tokens(self) -> int:
        return self.n_pairs * self.padded_len


def label_indices(label2id: Mapping[str, int]) -> tuple[int, int]:
    """(entailment_index, contradiction_index) from a config's label2id.

    Entailment is the label whose lower-case name starts with "entail", as in the transformers
    zero-shot pipeline. Contradiction is the label starting with "contradict"; without one, the
    pipeline's rule (``-1 if entailment_id == 0 else 0``), which for a 2-label head is the other
    label. The two agree for every published MNLI head (contradiction first or last); for an
    order such as (entailment, contradiction, neutral) we pick contradiction where the pipeline
    would pick neutral.
    """
    by_name = {name.lower(): index for name, index in label2id.items()}
    entail = [index for name, index in by_name.items() if name.startswith("entail")]
    if not entail:
        raise ValueError(
            f"no entailment label in the model's label2id {dict(label2id)}: zero-shot NLI needs "
            "a label whose name starts with 'entail' (e.g. ENTAILMENT or entailment)"
        )
    contradict = [index for name, index in by_name.items() if name.startswith("contradict")]
    if contradict:
        return entail[0], contradict[0]
    last = max(label2id.values())
    return entail[0], (last if entail[0] == 0 else 0)


def resolve_device(device: str | None) -> torch.device:
    """The torch device for a setting: None means CUDA when present, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device.strip())
    except RuntimeError as err:
        raise ValueError(f"invalid device {device!r}: expected e.g. 'cpu', 'cuda' or 'cuda:0'") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return resolved


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """The weights' dtype: None means fp16 on CUDA (tensor cores) and fp32 elsewhere."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[dtype.strip().lower()]
    except KeyError:
        raise ValueError(f"invalid dtype {dtype!r}: expected one of {', '.join(_DTYPES)}") from None


def _load_pretrained(name: str, *, weights: bool = True) -> tuple[Any, torch.nn.Module]:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    if not weights:
        return tokenizer, AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(name))
    try:
        model = AutoModelForSequenceClassification.from_pretrained(name, attn_implementation="sdpa")
    except ValueError:
        # Architectures without an SDPA kernel refuse it at load; eager attention always works.
        model = AutoModelForSequenceClassification.from_pretrained(name, attn_implementation="eager")
    return tokenizer, model


def _segment_encoder(tokenizer: Any) -> Any | None:
    """A private copy of a fast tokenizer's Rust backend, set up as ``tokenizer(text,
    add_special_tokens=False)`` sets it up, or None for a tokenizer without one.

    Calling the backend directly skips transformers' per-call setup and its batch path, which
    hands even one text to a thread pool: about half the cost (BENCHMARKS.md). A copy, so that
    nobody else's truncation or padding settings on the shared backend can leak in.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    encoder = Tokenizer.from_str(backend.to_str())
    encoder.no_truncation()
    encoder.no_padding()
    encoder.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
    for text in (*(text for probe in PROBES for text in probe), "Fed's $3.5B 2.5% [SEP] Ünïcode"):
        if encoder.encode(text, add_special_tokens=False).ids != tokenizer(text, add_special_tokens=False)["input_ids"]:
            return None  # the backend does not encode as the tokenizer does: keep the tokenizer's way
    return encoder


def _length_limits(tokenizer: Any, config: Any) -> tuple[int, int]:
    """(max_length, max_padded_len): what a pair may hold, and what padding may round up to.

    Padding may round past max_length but never past what the position embeddings accept.
    """
    positions = getattr(config, "max_position_embeddings", None)
    # Tokenizers without a stated limit report a huge sentinel (int(1e30)): ignore it.
    stated = [n for n in (tokenizer.model_max_length, positions) if isinstance(n, int) and 0 < n < 10**6]
    max_length = min(stated, default=_DEFAULT_MAX_LENGTH)
    return max_length, max(max_length, positions if isinstance(positions, int) else 0)


def use_shape_free_attention() -> None:
    """Keep cuDNN out of ``scaled_dot_product_attention`` (torch's flash, memory-efficient and
    math kernels stay): cuDNN builds a plan for every new input shape, and a batcher's batches
    come in hundreds of shapes (pairs × padded length).

    Under sustained load most batches are of a shape not seen before, so most paid for a plan,
    many times the forward itself on an H200 (BENCHMARKS.md, "One forward's cost"). Without
    cuDNN a new shape costs about what a seen one does. The setting is the process's: one
    process serves one model.
    """
    torch.backends.cuda.enable_cudnn_sdp(False)


GPU_LENGTH_MULTIPLE = 8
"""On a GPU padded lengths are rounded up to a multiple of this (tensor-core tiles, reused shapes)."""
WARM_UP_STEP = 8
"""``warm_up`` runs a padded length every this many tokens (every bucket on a GPU)."""


class NliModel:
    """A sequence-classification NLI model with its tokenizer, ready for batched pairs."""

    length_multiple: int
    """Padded sequence lengths are multiples of this: ``GPU_LENGTH_MULTIPLE`` on a GPU, whose kernels
    (and CUDA graphs) are chosen per shape, so shapes should repeat; 1 on a CPU, whose forward time
    grows with every padded token and which keeps nothing per shape (BENCHMARKS.md)."""

    def __init__(
        self, name: str, tokenizer: Any, model: torch.nn.Module, *, hypothesis_cache_size: int = 4096
    ) -> None:
        """Wrap an already-placed model; ``load`` is the usual way in."""
        self.name = name
        self.tokenizer = tokenizer
        self.model = model.eval()
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.length_multiple = GPU_LENGTH_MULTIPLE if self.device.type == "cuda" else 1
        if self.device.type == "cuda":
            use_shape_free_attention()
        config = model.config
        self.labels = tuple(config.id2label[i] for i in range(config.num_labels))
        self.entailment_index, self.contradiction_index = label_indices(config.label2id)
        self.max_length, self.max_padded_len = _length_limits(tokenizer, config)
        self.template = probe_pair_template(tokenizer)
        self.layout = PairLayout(self.template, self.max_length)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._pad_type = getattr(tokenizer, "pad_token_type_id", 0)
        # Feed token types only where the model takes them and its tokenizer emits them, as the
        # transformers pipeline does (DistilBERT takes none; RoBERTa's tokenizer emits none).
        self._uses_token_types = "token_type_ids" in inspect.signature(model.forward).parameters and (
            "token_type_ids" in getattr(tokenizer, "model_input_names", ())
        )
        self._segment_encoder = _segment_encoder(tokenizer)
        self._hypothesis_ids = functools.lru_cache(maxsize=hypothesis_cache_size)(self.encode_text)

    @classmethod
    def load(cls, name: str, *, device: str | None = None, dtype: str | None = None) -> NliModel:
        """Load a Hugging Face id, a local directory or a ``synthetic:*`` name onto a device."""
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        if name.startswith("synthetic:"):
            tokenizer, model = build_synthetic(name)
        else:
            tokenizer, model = _load_pretrained(name)
        return cls(name, tokenizer, model.to(device=torch_device, dtype=torch_dtype).eval())

    @classmethod
    def load_head(cls, name: str) -> NliModel:
        """The tokenizer and labels of a model without its weights (torch's ``meta`` device): what
        a front process of a split worker needs to tokenize and aggregate; it cannot ``run``."""
        with torch.device("meta"):
            if name.startswith("synthetic:"):
                tokenizer, model = build_synthetic(name)
            else:
                tokenizer, model = _load_pretrained(name, weights=False)
        return cls(name, tokenizer, model)

    def encode_text(self, text: str) -> tuple[int, ...]:
        """Token ids without special tokens: one segment of a pair (the same ids as
        ``tokenizer(text, add_special_tokens=False)``, at half its cost where the
        tokenizer has a Rust backend)."""
        if self._segment_encoder is not None:
            return tuple(self._segment_encoder.encode(text, add_special_tokens=False).ids)
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_texts(self, texts: Sequence[str]) -> list[tuple[int, ...]]:
        """``encode_text`` of many texts in one call: the Rust backend spreads them over the
        cores and holds no GIL while it works (BENCHMARKS.md)."""
        if self._segment_encoder is None or len(texts) < 2:
            return [self.encode_text(text) for text in texts]
        encodings = self._segment_encoder.encode_batch_fast(list(texts), add_special_tokens=False)
        return [tuple(encoding.ids) for encoding in encodings]

    def hypothesis_ids(self, text: str) -> tuple[int, ...]:
        """``encode_text`` through a bounded LRU: the same few hypotheses recur in every job.

        ``functools.lru_cache`` keeps its bookkeeping consistent across threads.
        """
        return self._hypothesis_ids(text)

    def pair(self, premise_ids: Sequence[int], hypothesis_ids: Sequence[int]) -> PairTokens:
        """A pair and its cost (``PairLayout.pair``)."""
        return self.layout.pair(premise_ids, hypothesis_ids)

    def padded_length(self, longest: int) -> int:
        """The batch's sequence length, as the batch policy budgets it: rounded up to
        ``length_multiple`` so kernel shapes repeat, never past the position embeddings."""
        return padded_length(longest, self.length_multiple, self.max_padded_len)

    def collate(self, pairs: Sequence[PairTokens]) -> Collated:
        """Pad a batch into CPU tensors (pinned on CUDA so ``run`` copies asynchronously).

        Rows are filled in one numpy call from one flat list of every pair's ids (what
        ``assemble`` builds pair by pair), not row by row: collation holds the GIL, and every
        microsecond of it is one the event loop and the model thread wait.
        """
        if not pairs:
            raise ValueError("cannot collate an empty batch")
        lengths = np.fromiter([p.length for p in pairs], dtype=np.int64, count=len(pairs))
        padded_len = self.padded_length(int(lengths.max()))
        real_tokens = int(lengths.sum())
        filled = np.arange(padded_len) < lengths[:, None]  # row-major: each row's first `length` slots
        input_ids = np.full((len(pairs), padded_len), self._pad_id, dtype=np.int64)
        input_ids[filled] = np.fromiter(self.layout.flat_ids(pairs), np.int64, real_tokens)
        token_types = None
        if self._uses_token_types:
            token_types = np.full((len(pairs), padded_len), self._pad_type, dtype=np.int64)
            token_types[filled] = np.fromiter(self.layout.flat_types(pairs), np.int64, real_tokens)
        tensors = [torch.from_numpy(input_ids), torch.from_numpy(filled.astype(np.int64))]
        tensors.append(torch.from_numpy(token_types) if token_types is not None else None)
        if self.device.type == "cuda":
            tensors = [t.pin_memory() if t is not None else None for t in tensors]
        return Collated(*tensors, n_pairs=len(pairs), padded_len=padded_len, real_tokens=real_tokens)

    def run(self, batch: Collated) -> np.ndarray:
        """float32 logits [n_pairs, num_labels]; out-of-memory becomes ResourceExhausted.

        The batcher answers ResourceExhausted by splitting the batch and shrinking its budget.
        """
        failure: RuntimeError | None = None
        try:
            with torch.inference_mode():
                inputs = {
                    "input_ids": batch.input_ids.to(self.device, non_blocking=True),
                    "attention_mask": batch.attention_mask.to(self.device, non_blocking=True),
                }
                if batch.token_type_ids is not None:
                    inputs["token_type_ids"] = batch.token_type_ids.to(self.device, non_blocking=True)
                return self.model(**inputs).logits.float().cpu().numpy()
        except RuntimeError as err:  # torch.cuda.OutOfMemoryError is a RuntimeError
            if not isinstance(err, torch.cuda.OutOfMemoryError) and "out of memory" not in str(err):
                raise
            # The traceback's frames hold this batch's activations; drop them before freeing.
            failure = err.with_traceback(None)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        raise ResourceExhausted(
            f"out of memory on {self.device} for {batch.n_pairs} pairs x {batch.padded_len} tokens"
        ) from failure

    def warm_up(self, max_len: int = 128, batch_pairs: int = 1) -> float:
        """One forward per padded-length bucket up to ``max_len`` (on a CPU, every 8th length);
        returns the seconds it took.

        The first batch of each new shape pays for kernel selection and allocator growth; paying it
        here keeps it out of the first real jobs' latency.
        """
        started = time.perf_counter()
        filler = self.encode_text("warm up")[:1] or (self._pad_id,)
        top = self.padded_length(min(max_len, self.max_length))
        specials = self.template.num_special_tokens
        step = max(self.length_multiple, WARM_UP_STEP)  # a CPU has no per-shape state to warm at each length
        for padded_len in range(step, top + 1, step):
            premise_len = max(min(padded_len, self.max_length) - specials - 1, 0)
            pair = self.pair(filler * premise_len, filler)
            self.run(self.collate([pair] * batch_pairs))
        return time.perf_counter() - started
