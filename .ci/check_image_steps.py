"""The commands the Dockerfiles run, run here on a clean virtualenv: Docker cannot run on CI machines.

``make check-images`` runs hadolint on both Dockerfiles, then this. It reads the Dockerfiles
themselves, so what it checks is what the images do: it copies the files the builder stage COPYs
(and only those) into a build context, installs the CPU image's lock (``locks/image-cpu.txt``,
hashes checked, the same Python as that image) and then the project from that context,
non-editable and with ``--no-deps``, and runs ``pip check``. The GPU image's lock (Python 3.12,
CUDA torch) cannot be installed here, so the GPU image's commands run on the CPU image's
environment, the code being the same; ``tests/test_locks.py`` checks both locks against
``pyproject.toml``. Then it bakes ``synthetic:tiny`` with
``bake-model``; then, with each runtime stage's ENV (its /opt paths pointed into the temporary
directory) and from an empty working directory, runs each image's CMD: the GPU image's serverless
worker on a ``--test_input`` job, pod mode's ``--help`` by changing the command, and the CPU image's
pod (held on loopback, with an API key) until its own HEALTHCHECK passes. Standard library only.

    python .ci/check_image_steps.py [--python python3.11] [--pip-args "--extra-index-url ..."] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {"gpu": ROOT / "Dockerfile.gpu", "cpu": ROOT / "Dockerfile.cpu"}
JOB = {"input": {"operation": "classify", "headline": "Apple Declares $0.25 Dividend", "company": "Apple"}}
STARTED = time.monotonic()


# --- a Dockerfile, read just far enough to run what it says ---------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def env(self) -> dict[str, str]:
        """The stage's own ENV, in order (``KEY=VALUE`` pairs, shell-quoted)."""
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for word in shlex.split(args):
                key, sep, value = word.partition("=")
                if not sep:
                    raise ValueError(f"stage {self.name}: ENV {args!r}: use KEY=VALUE")
                values[key] = value
        return values

    def cmd(self) -> list[str]:
        (args,) = self.all("CMD")[-1:] or [""]
        return _exec_form("CMD", args)

    def healthcheck(self) -> list[str] | None:
        found = self.all("HEALTHCHECK")
        if not found:
            return None
        _, sep, args = found[-1].partition("CMD ")
        if not sep:
            raise ValueError(f"HEALTHCHECK {found[-1]!r}: expected options then CMD [...]")
        return _exec_form("HEALTHCHECK CMD", args)

    def copies(self) -> list[str]:
        """Sources of this stage's COPY instructions from the build context (not ``--from``)."""
        sources: list[str] = []
        for args in self.all("COPY"):
            words = shlex.split(args)
            if any(w.startswith("--from") for w in words):
                continue
            sources += [w for w in words[:-1] if not w.startswith("--")]
        return sources


def _exec_form(what: str, args: str) -> list[str]:
    try:
        argv = json.loads(args)
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {args!r}: use the JSON (exec) form") from err
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise ValueError(f"{what} {args!r}: expected a non-empty list of strings")
    return argv


def parse_dockerfile(path: Path) -> dict[str, Stage]:
    """Stages by name (the last is also under "final"), with continuation lines joined."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not pending and raw.lstrip().startswith("#"):
            continue
        if pending and raw.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction is dropped, as Docker does
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        lines.append(pending + raw)
        pending = ""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in lines:
        if not line.strip():
            continue
        keyword, _, args = line.strip().partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            if not match:
                raise ValueError(f"{path.name}: cannot read FROM {args!r}")
            current = Stage(name=match.group(2) or f"stage{len(stages)}", base=match.group(1))
            stages[current.name] = current
        elif current is not None:
            current.instructions.append((keyword, args))
    if current is None:
        raise ValueError(f"{path.name}: no FROM")
    stages["final"] = current
    return stages


# --- running the steps -----------------------------------------------------------------------------


def step(title: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {title}", flush=True)


def run(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:  # fmt: skip
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        fail(f"{shlex.join(argv)} exited {done.returncode}", done)
    return done


def fail(message: str, done: subprocess.CompletedProcess[str] | None = None) -> None:
    if done is not None:
        print((done.stdout + done.stderr)[-6000:], file=sys.stderr)
    print(f"check-images: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def runtime_env(stage: Stage, paths: dict[str, str], base: dict[str, str]) -> dict[str, str]:
    """The runtime stage's ENV over ``base``, with its absolute /opt paths moved into ``paths``."""
    env = dict(base)
    for key, value in stage.env().items():
        for image_path, here in paths.items():
            value = value.replace(image_path, here)
        env[key] = value.replace("$PATH", base.get("PATH", "")).replace("${PATH}", base.get("PATH", ""))
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_pod(cmd: list[str], health: list[str] | None, env: dict[str, str], cwd: Path) -> None:
    """Start the image's pod command on loopback with an API key; wait for its own HEALTHCHECK."""
    port = free_port()
    argv = [*cmd, "--host", "127.0.0.1", "--port", str(port)]  # argparse: the last --host/--port win
    env = {**env, "API_KEY": "check-images-key"}
    log = cwd / "pod.log"
    with log.open("w") as out:
        pod = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    try:
        probe = [arg.replace(":8000/", f":{port}/") for arg in (health or [])]
        deadline = time.monotonic() + 120
        while True:
            if pod.poll() is not None:
                fail(f"the pod command exited {pod.returncode} before it was healthy:\n{log.read_text()[-4000:]}")
            healthy = probe and subprocess.run(probe, env=env, cwd=cwd, capture_output=True, timeout=10, check=False)
            if healthy and healthy.returncode == 0:
                break
            if time.monotonic() > deadline:
                fail(f"the pod's HEALTHCHECK never passed in 120 s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
    finally:
        if pod.poll() is None:
            pod.send_signal(signal.SIGTERM)
            try:
                pod.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pod.kill()
                pod.wait()
    step(f"{shlex.join(argv)} passed its HEALTHCHECK on port {port}, exited {pod.returncode} on SIGTERM")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter for the virtualenv")
    parser.add_argument("--pip-args", default="",
                        help="more pip arguments for the lock's install, e.g. where the CPU torch wheel is")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temporary one)")
    args = parser.parse_args(argv)

    images = {kind: parse_dockerfile(path) for kind, path in DOCKERFILES.items()}
    copies = {kind: stages["builder"].copies() for kind, stages in images.items()}
    code = {kind: [source for source in sources if not source.startswith("locks/")] for kind, sources in copies.items()}
    if code["gpu"] != code["cpu"]:
        fail(f"the images copy different code: {code}")
    work = args.keep or Path(tempfile.mkdtemp(prefix="check-images-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        check(images, copies["cpu"], work, args.python, shlex.split(args.pip_args))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    step("check-images: the Dockerfiles' steps passed")
    return 0


def check(images: dict[str, dict[str, Stage]], copies: list[str], work: Path, python: str, pip_args: list[str]) -> None:
    venv, context, model, home = work / "venv", work / "src", work / "model", work / "home"
    base_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MODEL_NAME")}
    step(f"virtualenv {venv} ({python})")
    run([python, "-m", "venv", str(venv)])
    vpy = str(venv / "bin" / "python")
    pip = [vpy, "-m", "pip", "install", "--disable-pip-version-check", "-q"]

    step(f"build context: {' '.join(copies)} (the builder's COPY lines)")
    context.mkdir()
    for source in copies:
        src = ROOT / source.rstrip("/")
        target = context / source.rstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, target)
    lock = context / "locks" / "image-cpu.txt"
    step(f"pip install --require-hashes --no-deps -r {lock.relative_to(context)} (the CPU image's lock)")
    run([*pip, "--require-hashes", "--no-deps", *pip_args, "-r", str(lock)], env=base_env, timeout=900)
    torch_version = run([vpy, "-c", "import torch; print(torch.__version__)"]).stdout.strip()
    if not torch_version.endswith("+cpu"):
        fail(f"the CPU image's lock installed torch {torch_version}, not a CPU build")
    step("pip install --no-deps --no-build-isolation <context> (non-editable, as the image does), pip check")
    run([*pip, "--no-deps", "--no-build-isolation", str(context)], env=base_env, timeout=600)
    run([vpy, "-m", "pip", "check"], env=base_env)

    home.mkdir()  # the images' empty WORKDIR: neither the source tree nor a test_input.json in reach
    step("bake-model --model synthetic:tiny (the weights stage, offline)")
    baked = run([vpy, "-m", "worker", "bake-model", "--model", "synthetic:tiny", "--out", str(model)],
                env=base_env, cwd=home)  # fmt: skip
    print("   ", baked.stdout.strip().splitlines()[-1])

    paths = {"/opt/venv": str(venv), "/opt/model": str(model), "/tmp/huggingface": str(work / "hf")}
    for kind, stages in images.items():
        final = stages["final"]
        env = runtime_env(final, paths, base_env)
        if env.get("HF_HUB_OFFLINE") != "1" or env.get("MODEL_NAME") != str(model):
            fail(f"Dockerfile.{kind}: the runtime must set HF_HUB_OFFLINE=1 and MODEL_NAME=/opt/model")
        prefix = run(["python", "-c", "import sys; print(sys.prefix)"], env=env, cwd=home).stdout.strip()
        if Path(prefix) != venv:
            fail(f"Dockerfile.{kind}: its PATH runs python from {prefix}, not the virtualenv")
        cmd = final.cmd()
        serverless = cmd[: cmd.index("worker") + 1] + ["serverless"]
        step(f"{kind}: {shlex.join(serverless)} --test_input (HF_HUB_OFFLINE=1, MODEL_NAME=<baked dir>)")
        done = run([*serverless, "--test_input", json.dumps(JOB)], env=env, cwd=home, timeout=180)
        if "Job result:" not in done.stdout or "'temporal_category'" not in done.stdout:
            fail("the serverless --test_input run printed no completed classify output", done)
        print("   ", next(line for line in done.stdout.splitlines() if "Job result:" in line)[:160], "...")
        step(f"{kind}: {shlex.join(cmd)}")
        if cmd[cmd.index("worker") + 1] == "serverless":
            pod = cmd[: cmd.index("worker") + 1] + ["pod", "--help"]
            run(pod, env=env, cwd=home)
            step(f"{kind}: pod mode by changing the command: {shlex.join(pod)} ok")
        else:
            run([*cmd, "--help"], env=env, cwd=home)
            if list(venv.glob("lib/python*/site-packages/worker/pod/__init__.py")):
                check_pod(cmd, final.healthcheck(), env, home)
            else:
                step(f"{kind}: worker/pod/ is not there yet: the live pod and HEALTHCHECK check is skipped")


if __name__ == "__main__":
    sys.exit(main())
