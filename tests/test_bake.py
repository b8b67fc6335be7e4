"""bake-model: a baked directory reloads to the same logits, offline; every failure is loud."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from worker.bake import MANIFEST, BakeError, bake_model, bake_model_command, check_model_dir
from worker.model import NliModel

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [
    ("Apple Declares $0.25 Dividend", "This is about a dividend."),
    ("Why The Fed Is Wrong About Inflation, And What Comes Next For Rates", "This is an opinion piece."),
    ("Tesla Q4", "This is a factual news report."),
]


def logits_of(model: NliModel) -> np.ndarray:
    pairs = [model.pair(model.encode_text(p), model.hypothesis_ids(h)) for p, h in PAIRS]
    return model.run(model.collate(pairs))


def run_cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT), **env}, capture_output=True, text=True, timeout=100,
        check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def baked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """synthetic:tiny baked once for the module's read-only checks."""
    out = tmp_path_factory.mktemp("baked") / "tiny"
    bake_model("synthetic:tiny", out)
    return out


def test_baked_synthetic_model_reloads_with_the_same_logits(baked: Path, tiny_model: NliModel) -> None:
    names = {p.name for p in baked.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer_config.json", "tokenizer.json", MANIFEST} <= names
    assert json.loads((baked / MANIFEST).read_text())["model"] == "synthetic:tiny"
    reloaded = NliModel.load(str(baked), device="cpu")
    assert reloaded.labels == tiny_model.labels
    assert reloaded.template == tiny_model.template
    np.testing.assert_allclose(logits_of(reloaded), logits_of(tiny_model), atol=1e-5)


@pytest.mark.parametrize("source", ["baked", "synthetic"])
def test_a_front_process_loads_the_tokenizer_and_labels_without_the_weights(
    baked: Path, tiny_model: NliModel, source: str
) -> None:
    head = NliModel.load_head(str(baked) if source == "baked" else "synthetic:tiny")
    assert head.device.type == "meta"  # no weights in memory
    assert (head.labels, head.entailment_index, head.contradiction_index, head.layout) == (
        tiny_model.labels, tiny_model.entailment_index, tiny_model.contradiction_index, tiny_model.layout,
    )  # fmt: skip
    text, hypothesis = "Sompo To Acquire Aspen For $3.5B, Or $37.50/Share", "This text is about Apple."
    assert head.pair(head.encode_text(text), head.hypothesis_ids(hypothesis)) == tiny_model.pair(
        tiny_model.encode_text(text), tiny_model.hypothesis_ids(hypothesis)
    )


def test_nothing_but_the_baked_directory_is_left_behind(baked: Path) -> None:
    assert [p.name for p in baked.parent.iterdir()] == ["tiny"]


def test_a_local_directory_rebakes_through_from_pretrained(baked: Path, tmp_path: Path) -> None:
    report = bake_model(str(baked), tmp_path / "copy")
    assert report.path == tmp_path / "copy" and report.labels == ("ENTAILMENT", "NEUTRAL", "CONTRADICTION")
    assert json.loads((tmp_path / "copy" / MANIFEST).read_text())["kind"] == "local"
    np.testing.assert_allclose(
        logits_of(NliModel.load(str(tmp_path / "copy"), device="cpu")),
        logits_of(NliModel.load(str(baked), device="cpu")),
        atol=1e-6,
    )


def copy_dir(source: Path, dest: Path, *, skip: str = "") -> Path:
    dest.mkdir()
    for path in source.iterdir():
        if path.name != skip:
            (dest / path.name).write_bytes(path.read_bytes())
    return dest


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("config.json", "has no config.json"),
        ("model.safetensors", "has no weights"),
        ("tokenizer_config.json", "has no tokenizer"),
        ("truncate", "does not load: "),
    ],
)
def test_a_broken_directory_fails_the_check(baked: Path, tmp_path: Path, damage: str, message: str) -> None:
    broken = copy_dir(baked, tmp_path / "broken", skip=damage)
    if damage == "truncate":
        weights = broken / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(BakeError, match=message):
        check_model_dir(broken)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("synthetic:nope", "unknown synthetic model 'synthetic:nope'"),
        ("./no/such/model", "--model ./no/such/model: no such directory"),
    ],
)
def test_an_unknown_model_fails_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, message: str
) -> None:
    assert bake_model_command(model, str(tmp_path / "out")) == 1
    assert f"bake-model: error: {message}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no directory that looks baked, no staging left


def test_a_corrupt_source_directory_fails_before_anything_is_written(
    baked: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = copy_dir(baked, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    assert bake_model_command(str(broken), str(tmp_path / "out")) == 1
    assert "does not load: " in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def test_an_existing_output_is_never_overwritten(baked: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bake_model_command("synthetic:tiny", str(baked)) == 1
    assert "already exists and is not an empty directory" in capsys.readouterr().err


def test_a_failed_check_leaves_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import worker.bake

    def failing_check(path: Path) -> None:
        raise BakeError(f"{path} gave bad logits")

    monkeypatch.setattr(worker.bake, "check_model_dir", failing_check)
    (tmp_path / "out").mkdir()  # an empty directory may be the target
    assert bake_model_command("synthetic:tiny", str(tmp_path / "out")) == 1
    assert "gave bad logits" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and not any((tmp_path / "out").iterdir())


def test_the_cli_bakes_and_the_worker_serves_the_directory_offline(tmp_path: Path) -> None:
    out = tmp_path / "model"
    done = run_cli(["bake-model", "--model", "synthetic:tiny", "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"bake-model: baked synthetic:tiny into {out}: DistilBertForSequenceClassification" in done.stdout
    job = {"input": {"operation": "classify", "headline": "Apple Declares $0.25 Dividend"}}
    served = run_cli(
        ["serverless", "--test_input", json.dumps(job)], tmp_path, MODEL_NAME=str(out), HF_HUB_OFFLINE="1",
        WARMUP_MAX_LEN="16",
    )  # fmt: skip
    assert served.returncode == 0, served.stdout + served.stderr
    assert "Job result:" in served.stdout and "'temporal_category'" in served.stdout


def test_the_cli_fails_loudly_on_an_unknown_hub_model(tmp_path: Path) -> None:
    done = run_cli(["bake-model", "--model", "nobody/no-such-model", "--out", str(tmp_path / "m")], tmp_path,
                   HF_HUB_OFFLINE="1")  # fmt: skip
    assert done.returncode == 1
    assert "bake-model: error: could not fetch the Hugging Face model 'nobody/no-such-model'" in done.stderr
    assert "HF_HUB_OFFLINE is set" in done.stderr
    assert not (tmp_path / "m").exists()
