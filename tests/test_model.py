"""worker.model: pair assembly equals the tokenizer's, collation, invariance, labels, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from batching.errors import ResourceExhausted
from worker.model import GPU_LENGTH_MULTIPLE, NliModel, label_indices, resolve_device, resolve_dtype
from worker.pairs import probe_pair_template
from worker.synthetic import build_synthetic

DATA = Path(__file__).parent / "data"
DEBERTA_DIR = Path("/work/shared/data/deberta-v3-tokenizer")
HEADLINES = [line.strip() for line in (DATA / "example_headlines.txt").read_text().splitlines()]
HEADLINES = [line for line in HEADLINES if line]
LONG_HYPOTHESIS = "This long hypothesis repeats itself. " * 80  # ~480 tokens: the premise gets cut
HYPOTHESES = [
    "This is an opinion piece or editorial.",
    "This is a factual news report.",
    "This text is about Apple.",
    LONG_HYPOTHESIS,
]
PREMISES = [*HEADLINES, " ".join(HEADLINES)]  # the last one alone is longer than max_length


def _borrowing(model: NliModel, tokenizer) -> NliModel:
    """An NliModel around another tokenizer, reusing a built model (only assembly is exercised)."""
    return NliModel("borrowed", tokenizer, model.model)


def _assert_assembly_matches_tokenizer(model: NliModel) -> None:
    tokenizer = model.tokenizer
    for premise in PREMISES:
        premise_ids = model.encode_text(premise)
        for hypothesis in HYPOTHESES:
            pair = model.pair(premise_ids, model.hypothesis_ids(hypothesis))
            expected = tokenizer(
                premise,
                hypothesis,
                truncation="only_first",
                max_length=model.max_length,
                return_token_type_ids=True,
            )
            ids, types = model.layout.assemble(pair)
            assert ids == expected["input_ids"], (premise, hypothesis)
            assert types == expected["token_type_ids"], (premise, hypothesis)
            assert pair.length == len(ids) <= model.max_length


def test_assembly_equals_tokenizer_for_bert_vocab(tiny_model):
    assert tiny_model.max_length == 512
    assert len(tiny_model.encode_text(PREMISES[-1])) > tiny_model.max_length
    _assert_assembly_matches_tokenizer(tiny_model)


@pytest.mark.skipif(not DEBERTA_DIR.is_dir(), reason=f"DeBERTa-v3 tokenizer not present at {DEBERTA_DIR}")
def test_assembly_equals_tokenizer_for_deberta_v3(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(DEBERTA_DIR))
    template = probe_pair_template(tokenizer)
    assert template.prefix_ids == (tokenizer.cls_token_id,)
    assert template.middle_ids == template.suffix_ids == (tokenizer.sep_token_id,)
    assert template.suffix_types == (1,)  # DeBERTa types the final [SEP] with the hypothesis
    _assert_assembly_matches_tokenizer(_borrowing(tiny_model, tokenizer))


def test_probe_handles_roberta_layout(tiny_model):
    """`<s> A </s></s> B </s>` with all-zero types, built on the BERT vocabulary (no download)."""
    from tokenizers import Tokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tiny_model.tokenizer.backend_tokenizer.to_str())
    backend.post_processor = RobertaProcessing(("[SEP]", 102), ("[CLS]", 101))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=512,
    )
    template = probe_pair_template(tokenizer)
    assert (template.prefix_ids, template.middle_ids, template.suffix_ids) == ((101,), (102, 102), (102,))
    assert template.num_special_tokens == 4
    _assert_assembly_matches_tokenizer(_borrowing(tiny_model, tokenizer))


def test_pair_rejects_hypothesis_that_leaves_no_room(tiny_model):
    premise = tiny_model.encode_text("Apple Declares Dividend")
    specials = tiny_model.template.num_special_tokens
    filling = tiny_model.encode_text("word") * (tiny_model.max_length - specials)
    with pytest.raises(ValueError, match="no room for the premise"):
        tiny_model.pair(premise, filling)
    with pytest.raises(Exception, match="too short"):  # the tokenizer refuses the same pair
        tiny_model.tokenizer(
            "Apple Declares Dividend", "word " * len(filling), truncation="only_first", max_length=512
        )
    assert tiny_model.pair((), filling).length == tiny_model.max_length  # nothing to cut: fits exactly


def _mixed_pairs(model: NliModel, n: int) -> list:
    premises = [model.encode_text(text) for text in PREMISES]
    hypotheses = [model.hypothesis_ids(text) for text in HYPOTHESES]
    return [model.pair(premises[i % len(premises)], hypotheses[i % len(hypotheses)]) for i in range(n)]


def test_logits_do_not_depend_on_batch_mates(tiny_model):
    pairs = _mixed_pairs(tiny_model, 64)
    target = tiny_model.pair(tiny_model.encode_text(HEADLINES[0]), tiny_model.hypothesis_ids(HYPOTHESES[0]))
    pairs[32] = target
    assert len({p.length for p in pairs}) > 5
    alone = tiny_model.run(tiny_model.collate([target]))
    batched = tiny_model.run(tiny_model.collate(pairs))
    assert alone.dtype == batched.dtype == np.float32
    assert batched.shape == (64, 3)
    np.testing.assert_allclose(batched[32], alone[0], rtol=0, atol=1e-5)


def test_collate_pads_to_the_longest_on_a_cpu_and_masks_exactly(tiny_model):
    pairs = _mixed_pairs(tiny_model, 13)[:-1]
    batch = tiny_model.collate(pairs)
    assert tiny_model.length_multiple == 1  # a CPU pays for every padded token and reuses no shapes
    assert batch.padded_len == max(p.length for p in pairs)
    assert batch.input_ids.shape == batch.attention_mask.shape == (len(pairs), batch.padded_len)
    assert batch.attention_mask.sum(dim=1).tolist() == [p.length for p in pairs]
    assert batch.token_type_ids is None  # DistilBERT's forward takes none
    assert (batch.n_pairs, batch.real_tokens) == (len(pairs), sum(p.length for p in pairs))
    assert batch.padded_tokens == len(pairs) * batch.padded_len


def test_collate_pads_to_a_multiple_of_8_as_on_a_gpu(tiny_model):
    model = NliModel("gpu-shaped", tiny_model.tokenizer, tiny_model.model)
    model.length_multiple = GPU_LENGTH_MULTIPLE  # what a CUDA device gets
    pairs = _mixed_pairs(model, 13)[:-1]  # leave out the longest, so rounding shows
    batch = model.collate(pairs)
    longest = max(p.length for p in pairs)
    assert batch.padded_len % 8 == 0 and longest <= batch.padded_len < longest + 8
    assert batch.attention_mask.sum(dim=1).tolist() == [p.length for p in pairs]
    np.testing.assert_allclose(model.run(batch), tiny_model.run(tiny_model.collate(pairs)), rtol=0, atol=1e-5)
    assert model.collate(_mixed_pairs(model, 64)).padded_len == 512  # capped: 512 is a multiple


def _tiny_bert(tiny_model: NliModel) -> NliModel:
    """A 1-layer BERT on the same tokenizer: a model whose forward takes token types."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        id2label={0: "entailment", 1: "neutral", 2: "contradiction"},
        label2id={"entailment": 0, "neutral": 1, "contradiction": 2},
    )  # fmt: skip
    return NliModel("tiny-bert", tiny_model.tokenizer, BertForSequenceClassification(config))


def test_collate_feeds_token_types_to_models_that_take_them(tiny_model):
    bert = _tiny_bert(tiny_model)
    pair = bert.pair(bert.encode_text(HEADLINES[1]), bert.hypothesis_ids(HYPOTHESES[1]))
    batch = bert.collate([pair])
    expected = bert.tokenizer(HEADLINES[1], HYPOTHESES[1])["token_type_ids"]
    assert batch.token_type_ids is not None
    assert batch.token_type_ids[0, : pair.length].tolist() == expected
    assert bert.run(batch).shape == (1, 3)


def test_collated_rows_are_the_tokenizers_own_padded_encoding(tiny_model):
    """Every row of a batch (ids, mask, types), over-long premises cut included, equals what the
    tokenizer gives for the pair with only_first truncation, padded to the batch's length."""
    bert = _tiny_bert(tiny_model)
    texts = [(PREMISES[i % len(PREMISES)], HYPOTHESES[i % len(HYPOTHESES)]) for i in range(len(PREMISES) * 2)]
    pairs = [bert.pair(bert.encode_text(premise), bert.hypothesis_ids(hypothesis)) for premise, hypothesis in texts]
    batch = bert.collate(pairs)
    expected = bert.tokenizer(
        [premise for premise, _ in texts], [hypothesis for _, hypothesis in texts],
        truncation="only_first", max_length=bert.max_length, padding="longest",
        return_token_type_ids=True,
    )  # fmt: skip
    width = len(expected["input_ids"][0])
    assert batch.padded_len >= width
    assert batch.input_ids[:, :width].tolist() == expected["input_ids"]
    assert batch.attention_mask[:, :width].tolist() == expected["attention_mask"]
    assert batch.token_type_ids is not None
    assert batch.token_type_ids[:, :width].tolist() == expected["token_type_ids"]
    assert not batch.attention_mask[:, width:].any()
    assert (batch.input_ids[:, width:] == tiny_model.tokenizer.pad_token_id).all()


def test_labels_and_indices_from_config(tiny_model):
    assert tiny_model.labels == ("ENTAILMENT", "NEUTRAL", "CONTRADICTION")
    assert (tiny_model.entailment_index, tiny_model.contradiction_index) == (0, 2)
    binary = NliModel.load("synthetic:tiny-binary", device="cpu")
    assert binary.labels == ("entailment", "not_entailment")
    assert (binary.entailment_index, binary.contradiction_index) == (0, 1)


@pytest.mark.parametrize(
    "names",
    [
        ("ENTAILMENT", "NEUTRAL", "CONTRADICTION"),
        ("CONTRADICTION", "NEUTRAL", "ENTAILMENT"),
        ("contradiction", "entailment", "neutral"),
        ("entailment", "not_entailment"),
        ("not_entailment", "entailment"),
    ],
)
def test_label_indices_agree_with_the_zero_shot_pipeline(names):
    label2id = {name: i for i, name in enumerate(names)}
    entailment, contradiction = label_indices(label2id)
    assert names[entailment].lower() == "entailment"
    pipeline_contradiction = -1 if entailment == 0 else 0  # transformers ZeroShotClassificationPipeline
    assert contradiction == range(len(names))[pipeline_contradiction]


def test_label_indices_pick_contradiction_by_name_where_the_pipeline_would_not():
    # The pipeline's position rule would land on neutral for these orders.
    assert label_indices({"entailment": 0, "contradiction": 1, "neutral": 2}) == (0, 1)
    assert label_indices({"neutral": 0, "contradiction": 1, "entailment": 2}) == (2, 1)


def test_label_indices_without_entailment_is_a_clear_error():
    with pytest.raises(ValueError, match="no entailment label.*LABEL_0"):
        label_indices({"LABEL_0": 0, "LABEL_1": 1})


@pytest.mark.parametrize("device", ["gpu0", "cuda:x", ""])
def test_bad_device_names_the_value(device):
    with pytest.raises(ValueError, match=f"invalid device '{device}'"):
        resolve_device(device)


def test_bad_dtype_names_the_value_and_choices():
    with pytest.raises(ValueError, match=r"invalid dtype 'float8'.*bfloat16"):
        resolve_dtype("float8", torch.device("cpu"))
    with pytest.raises(ValueError, match="'half'"):
        NliModel.load("synthetic:tiny", device="cpu", dtype="half")
    assert resolve_dtype("BF16", torch.device("cpu")) is torch.bfloat16
    assert resolve_dtype(None, torch.device("cpu")) is torch.float32
    assert resolve_dtype(None, torch.device("cuda")) is torch.float16


def test_unknown_synthetic_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="synthetic:huge.*synthetic:tiny-binary"):
        NliModel.load("synthetic:huge", device="cpu")


def test_synthetic_weights_are_fixed_and_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    _, first = build_synthetic("synthetic:tiny")
    _, second = build_synthetic("synthetic:tiny")
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_out_of_memory_becomes_resource_exhausted(tiny_model, monkeypatch):
    batch = tiny_model.collate(_mixed_pairs(tiny_model, 4))

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(tiny_model.model, "forward", out_of_memory)
    with pytest.raises(ResourceExhausted, match="4 pairs") as caught:
        tiny_model.run(batch)
    assert isinstance(caught.value.__cause__, RuntimeError)

    def other_failure(*args, **kwargs):
        raise RuntimeError("index out of range in self")

    monkeypatch.setattr(tiny_model.model, "forward", other_failure)
    with pytest.raises(RuntimeError, match="index out of range"):
        tiny_model.run(batch)


ODD_TEXTS = ["", "   ", "[SEP] [CLS] [PAD]", "Ünïcode café naïve", "emoji 🚀📈", "tab\tnew\nline", "x" * 3000]


def test_segments_encode_as_the_tokenizer_does_through_the_rust_backend(tiny_model):
    """encode_text calls the Rust backend directly (half the cost); its ids must be the
    tokenizer's own, on real headlines and odd text, whatever truncation the shared backend
    was last left with."""
    from loadtest.headlines import headlines

    assert tiny_model._segment_encoder is not None
    tiny_model.tokenizer("warm", "up", truncation="only_first", max_length=8)  # leaves truncation set
    for text in [*headlines(), *ODD_TEXTS]:
        assert list(tiny_model.encode_text(text)) == tiny_model.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_many_texts_encode_in_one_call_as_each_alone(tiny_model):
    from loadtest.headlines import headlines

    texts = [*headlines(), *ODD_TEXTS]
    assert tiny_model.encode_texts(texts) == [tiny_model.encode_text(text) for text in texts]
    assert tiny_model.encode_texts([]) == [] and tiny_model.encode_texts(["one"]) == [tiny_model.encode_text("one")]


def test_hypothesis_cache_is_shared_and_bounded(tiny_model):
    model = NliModel("cached", tiny_model.tokenizer, tiny_model.model, hypothesis_cache_size=2)
    first = model.hypothesis_ids(HYPOTHESES[0])
    assert model.hypothesis_ids(HYPOTHESES[0]) is first
    assert first == model.encode_text(HYPOTHESES[0])
    for hypothesis in HYPOTHESES:
        model.hypothesis_ids(hypothesis)
    info = model._hypothesis_ids.cache_info()
    assert info.currsize == info.maxsize == 2


def test_distilbert_mnli_has_the_real_size_and_warms_up():
    model = NliModel.load("synthetic:distilbert-mnli", device="cpu")
    assert 66_000_000 < sum(p.numel() for p in model.model.parameters()) < 68_000_000
    assert model.labels == ("ENTAILMENT", "NEUTRAL", "CONTRADICTION")
    assert (model.device, model.dtype, model.max_length) == (torch.device("cpu"), torch.float32, 512)
    seconds = model.warm_up(max_len=32, batch_pairs=2)
    assert isinstance(seconds, float) and seconds >= 0


def test_deberta_v3_large_has_the_real_architecture_and_a_two_label_head():
    """Built on the meta device: the architecture and size, without 1.3 GB of random weights."""
    from worker.synthetic import synthetic_config

    config, model_class = synthetic_config("synthetic:deberta-v3-large")
    with torch.device("meta"):
        model = model_class(config)
    encoder = sum(p.numel() for name, p in model.named_parameters() if "word_embeddings" not in name)
    assert 300_000_000 < encoder < 310_000_000  # DeBERTa-v3-large's 304M backbone, vocabulary aside
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (24, 1024, 16)
    assert config.relative_attention and config.pos_att_type == ["p2c", "c2p"]
    assert config.id2label == {0: "entailment", 1: "not_entailment"}
    assert label_indices(config.label2id) == (0, 1)


def test_a_deberta_v2_model_runs_through_the_runner(tiny_model):
    """The same architecture scaled down: relative attention, token types and the BERT template."""
    from worker.synthetic import synthetic_config

    config, model_class = synthetic_config("synthetic:deberta-v3-large")
    config.update({"hidden_size": 32, "pooler_hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "intermediate_size": 64})
    torch.manual_seed(0)
    deberta = NliModel("tiny-deberta", tiny_model.tokenizer, model_class(config))
    assert deberta.labels == ("entailment", "not_entailment")
    pairs = _mixed_pairs(deberta, 12)
    batched = deberta.run(deberta.collate(pairs))
    assert batched.shape == (12, 2) and np.isfinite(batched).all()
    np.testing.assert_allclose(batched[3], deberta.run(deberta.collate([pairs[3]]))[0], rtol=0, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp16_pins_batches_and_stays_batch_invariant():
    model = NliModel.load("synthetic:tiny")
    assert (model.device.type, model.dtype, model.length_multiple) == ("cuda", torch.float16, GPU_LENGTH_MULTIPLE)
    assert not torch.backends.cuda.cudnn_sdp_enabled(), "no cuDNN attention plan to build for each new batch shape"
    pairs = _mixed_pairs(model, 64)
    batch = model.collate(pairs)
    assert batch.input_ids.is_pinned() and batch.attention_mask.is_pinned()
    alone = model.run(model.collate([pairs[32]]))
    batched = model.run(batch)
    assert batched.dtype == np.float32
    np.testing.assert_allclose(batched[32], alone[0], rtol=0, atol=1e-2)
    assert isinstance(model.warm_up(max_len=64, batch_pairs=4), float)
