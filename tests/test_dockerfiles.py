"""The Dockerfiles say what the deployment guide promises (read statically; ``make check-images``
runs their steps). Uses the same reader as ``.ci/check_image_steps.py``."""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_image_steps", ROOT / ".ci" / "check_image_steps.py")
assert _spec is not None and _spec.loader is not None
steps = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = steps  # dataclasses look their module up
_spec.loader.exec_module(steps)

IMAGES = {kind: steps.parse_dockerfile(path) for kind, path in steps.DOCKERFILES.items()}


def args_of(path: Path, name: str) -> dict[str, str]:
    """ARG defaults anywhere in the file (before FROM too)."""
    text = path.read_text(encoding="utf-8")
    return dict(re.findall(rf"^ARG ({name})=(\S+)$", text, re.MULTILINE))


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_stages_and_what_the_runtime_holds(kind: str) -> None:
    stages = IMAGES[kind]
    assert {"builder", "weights", "runtime"} <= set(stages) and stages["final"] is stages["runtime"]
    assert stages["weights"].base == "builder"
    runtime = stages["runtime"]
    env = runtime.env()
    assert env["HF_HUB_OFFLINE"] == "1" and env["MODEL_NAME"] == "/opt/model"
    assert env["PATH"].startswith("/opt/venv/bin:")
    copied = runtime.all("COPY")
    assert copied == ["--from=builder /opt/venv /opt/venv", "--from=weights /opt/model /opt/model"]
    (user,) = runtime.all("USER")
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), "a numeric, non-root user"
    for word in ("gcc", "build-essential", "python3-dev", "python3-venv", "curl"):
        assert not any(word in run for run in runtime.all("RUN")), f"{word} in the runtime stage"


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_the_weights_are_baked_with_bake_model(kind: str) -> None:
    (bake,) = IMAGES[kind]["weights"].all("RUN")
    assert 'python -m worker bake-model --model "${MODEL_NAME}" --out /opt/model' in bake
    assert "|| true" not in bake and ";" not in bake, "a failed bake must fail the build"
    assert args_of(steps.DOCKERFILES[kind], "MODEL_NAME") == {"MODEL_NAME": "typeform/distilbert-base-uncased-mnli"}


def test_each_image_installs_its_lock_then_the_project_without_resolving() -> None:
    for kind in ("gpu", "cpu"):
        runs = IMAGES[kind]["builder"].all("RUN")
        first = next(i for i, run in enumerate(runs) if "pip install" in run)
        assert runs[first].startswith("pip install --require-hashes --no-deps ")
        assert runs[first].split(" && ")[0].rstrip().endswith(f"-r locks/image-{kind}.txt")
        project = next(run for run in runs[first + 1 :] if "pip install" in run)
        assert project.startswith("pip install --no-deps --no-build-isolation . ") and "pip check" in project


def _pinned(lock: str, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}==(\S+)", (ROOT / "locks" / lock).read_text(), re.MULTILINE)
    assert match, f"{lock} pins no {name}"
    return match[1]


def test_the_base_images_match_their_locks() -> None:
    gpu = args_of(steps.DOCKERFILES["gpu"], "CUDA_IMAGE")
    cpu = args_of(steps.DOCKERFILES["cpu"], "TORCH_INDEX|PYTHON_IMAGE")
    cuda = re.fullmatch(r"nvidia/cuda:(\d+\.\d+)\.\d+-base-ubuntu24\.04", gpu["CUDA_IMAGE"])
    assert cuda, "a pinned CUDA image on Ubuntu 24.04, whose python3 is the GPU lock's 3.12"
    runtime = _pinned("image-gpu.txt", "nvidia-cuda-runtime")
    assert runtime.startswith(cuda[1] + "."), f"torch's CUDA runtime {runtime}, base image CUDA {cuda[1]}"
    assert cpu["PYTHON_IMAGE"] == "python:3.11-slim-bookworm", "the dev lock's Python: CI tests what ships"
    assert cpu["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert _pinned("image-cpu.txt", "torch").endswith("+cpu")


def test_the_images_copy_every_package_and_the_context_lets_them_through() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    include = setuptools["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") + "/" for pattern in include}
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for kind, stages in IMAGES.items():
        copied = set(stages["builder"].copies())
        assert packages | {"pyproject.toml", "README.md", f"locks/image-{kind}.txt"} == copied, kind
    allowed = {line.removeprefix("!") for line in ignore[ignore.index("*") + 1 :] if line.startswith("!")}
    assert allowed == {"locks/image-*.txt", "pyproject.toml", "README.md"} | {p.rstrip("/") for p in packages}


def test_commands_and_healthcheck() -> None:
    assert IMAGES["gpu"]["final"].cmd() == ["python", "-u", "-m", "worker", "serverless"]
    assert IMAGES["gpu"]["final"].healthcheck() is None  # RunPod watches serverless workers itself
    cpu = IMAGES["cpu"]["final"]
    assert cpu.cmd() == ["python", "-u", "-m", "worker", "pod", "--host", "0.0.0.0", "--port", "8000"]
    probe = cpu.healthcheck()
    assert probe is not None and probe[:2] == ["python", "-c"] and "http://127.0.0.1:8000/ping" in probe[2]
    assert "--insecure" not in cpu.cmd(), "the CPU image's pod needs API_KEY by default"


def test_the_reader_joins_continuations_and_skips_comments(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "# syntax=docker/dockerfile:1.7\nARG BASE=python:3.12-slim\nFROM ${BASE} AS one\n"
        'ENV A=1 \\\n    B="two words"\n# a comment\nRUN echo a \\\n    # inside\n    && echo b\n'
        'FROM one\nCMD ["python", "-V"]\n'
    )
    stages = steps.parse_dockerfile(dockerfile)
    assert stages["one"].env() == {"A": "1", "B": "two words"}
    assert stages["one"].all("RUN") == ["echo a     && echo b"]
    assert stages["final"].base == "one" and stages["final"].cmd() == ["python", "-V"]
    dockerfile.write_text("FROM x\nCMD python -V\n")
    with pytest.raises(ValueError, match="JSON"):
        steps.parse_dockerfile(dockerfile)["final"].cmd()
