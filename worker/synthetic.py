"""Synthetic models: random weights over the bundled BERT vocabulary, with real architectures.

Tests, CI and benchmarks run on them where real weights cannot be downloaded: ``synthetic:tiny``
(2 layers, 32 wide) for tests, ``synthetic:distilbert-mnli`` and ``synthetic:deberta-v3-large``
with the compute of the real models. ``bake-model`` saves one as a model directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

SYNTHETIC_MODELS = (
    "synthetic:tiny", "synthetic:tiny-binary", "synthetic:distilbert-mnli", "synthetic:deberta-v3-large",
)
VOCAB_PATH = Path(__file__).parent / "data" / "bert-base-uncased-vocab.txt"
_MNLI_LABELS = {0: "ENTAILMENT", 1: "NEUTRAL", 2: "CONTRADICTION"}
_BINARY_LABELS = {0: "entailment", 1: "not_entailment"}


def build_synthetic(name: str) -> tuple[Any, torch.nn.Module]:
    """(tokenizer, model) for a synthetic name: random weights, real vocabulary, fixed seed.

    Kept apart from ``NliModel.load`` so ``bake-model`` can ``save_pretrained`` the pair.
    """
    from transformers import BertTokenizer

    config, model_class = synthetic_config(name)
    tokenizer = BertTokenizer(vocab=str(VOCAB_PATH), do_lower_case=True, model_max_length=512)
    # A private RNG stream: same weights every time, and the caller's global RNG is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model_class(config)
    return tokenizer, model


def synthetic_config(name: str) -> tuple[Any, type[torch.nn.Module]]:
    """(config, model class) of a synthetic name: the architecture, without building it.

    ``synthetic:deberta-v3-large`` is DeBERTa-v3-large's encoder (24 layers, 1024 wide,
    relative attention) with a 2-label head, about 7x DistilBERT's compute a pair: the size of
    the model the peer headline service runs. Its embedding table is sized for the bundled BERT
    vocabulary (DeBERTa-v3's own has 128k entries), which changes memory, not compute.
    """
    from transformers import (
        DebertaV2Config,
        DebertaV2ForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    if name == "synthetic:deberta-v3-large":
        config = DebertaV2Config(
            vocab_size=30_522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
            intermediate_size=4096, max_position_embeddings=512, relative_attention=True,
            position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"],
            layer_norm_eps=1e-7, max_relative_positions=-1, position_biased_input=False, type_vocab_size=0,
            pad_token_id=0, **_label_maps(_BINARY_LABELS),
        )  # fmt: skip  (microsoft/deberta-v3-large's config.json, but the vocabulary)
        return config, DebertaV2ForSequenceClassification
    if name == "synthetic:distilbert-mnli":
        sizes: dict[str, int] = {}  # DistilBertConfig defaults are typeform/distilbert-base-uncased-mnli
        labels = _MNLI_LABELS
    elif name in ("synthetic:tiny", "synthetic:tiny-binary"):
        sizes = {"n_layers": 2, "dim": 32, "n_heads": 2, "hidden_dim": 64}
        labels = _BINARY_LABELS if name == "synthetic:tiny-binary" else _MNLI_LABELS
    else:
        raise ValueError(f"unknown synthetic model {name!r}: expected one of {', '.join(SYNTHETIC_MODELS)}")
    return DistilBertConfig(**sizes, **_label_maps(labels)), DistilBertForSequenceClassification


def _label_maps(labels: Mapping[int, str]) -> dict[str, dict]:
    return {"id2label": dict(labels), "label2id": {v: k for k, v in labels.items()}}
