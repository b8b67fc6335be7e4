"""The shell commands in README.md and docs/*.md, run as written, so the docs cannot drift.

Every command in a ``bash`` or ``console`` block is accounted for: a scenario below runs it (from
a temporary directory, with this virtualenv's ``python`` first on PATH), ``.ci/run`` runs it, or
``NOT_HERE`` says why it cannot run on a machine without Docker, a GPU or a RunPod account. A new
command in the docs fails ``test_every_command_is_run_or_says_why_not`` until it is one of these.
Servers started here listen on the ports the docs name (8000, 8080), on loopback.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    text: str
    shown: str = ""
    """What a ``console`` block shows the command printing."""


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` outside quotes."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _blocks(path: Path) -> Iterator[tuple[str, int, list[str]]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        fence = re.fullmatch(r"```(\w*)", lines[i])
        if fence is None:
            i += 1
            continue
        end = lines.index("```", i + 1)
        if fence[1] in ("bash", "console"):
            yield fence[1], i + 2, lines[i + 1 : end]
        i = end + 1


def doc_commands(path: Path) -> list[list[Command]]:
    """Each shell block of ``path`` as its commands, continuation lines joined."""
    return [_console(path, first, body) if kind == "console" else _bash(path, first, body)
            for kind, first, body in _blocks(path)]  # fmt: skip


def _bash(path: Path, first_line: int, body: list[str]) -> list[Command]:
    commands: list[Command] = []
    text, start = "", 0
    for number, raw in enumerate(body, first_line):
        if not text:
            start = number
        line = _strip_comment(raw)
        if line.endswith("\\"):
            text += line[:-1] + " "
            continue
        text += line
        if text.strip():
            commands.append(Command(path.name, start, text.strip()))
        text = ""
    return commands


def _console(path: Path, first_line: int, body: list[str]) -> list[Command]:
    """``$ `` lines are commands; the lines after one, up to the next, are what it printed."""
    commands: list[Command] = []
    text, start, shown, continuing = "", 0, [], False
    for number, raw in enumerate(body, first_line):
        if continuing or raw.startswith("$ "):
            if not continuing:
                if text:
                    commands.append(Command(path.name, start, text, "\n".join(shown)))
                text, start, shown = "", number, []
                raw = raw[2:]
            line = _strip_comment(raw)
            continuing = line.endswith("\\")
            text += (line[:-1] + " ") if continuing else line
        else:
            shown.append(raw)
    if text:
        commands.append(Command(path.name, start, text, "\n".join(shown)))
    return commands


ALL_BLOCKS = {path.name: doc_commands(path) for path in DOCS}


def block(doc: str, first: str) -> list[Command]:
    """The block of ``doc`` whose first command starts with ``first``."""
    (found,) = [commands for commands in ALL_BLOCKS[doc] if commands and commands[0].text.startswith(first)]
    return found


def command(doc: str, text: str) -> Command:
    (found,) = [c for commands in ALL_BLOCKS[doc] for c in commands if c.text.startswith(text)]
    return found


# --- what cannot run here, and what .ci/run runs ----------------------------------------------

DOCKER = "needs a Docker engine (none runs on these machines; `make check-images` replays the Dockerfiles' steps)"
RUNPOD = "needs a RunPod account and endpoint (the emulator scenarios run the same calls locally)"
NOT_HERE_BLOCKS = {
    ("DEPLOYMENT.md", "docker build --platform"): DOCKER,
    ("DEPLOYMENT.md", "docker run --rm --gpus all"): DOCKER + "; its curl lines talk to the container",
    ("DEPLOYMENT.md", "export RUNPOD_API_KEY=..."): RUNPOD,
    ("CLIENT.md", 'curl -s -X POST "https://api.runpod.ai'): RUNPOD,
}
NOT_HERE_COMMANDS = {
    ("DEPLOYMENT.md", "API_KEY=change-me docker compose up --build"): DOCKER + "; tests/test_monitoring.py checks its parts",
    ("API.md", "python -m worker serverless"): "polls RunPod's queue (the emulator scenario runs it against a local one)",
}
BY_CI_SCRIPT = {  # a README command: what .ci/run holds that runs it
    "make run": ["make run"],
    "make test": ["make test"],
    "make check-images": ["make check-images"],
    "BURST_NLI_REQUIRE_PROMETHEUS=1 make test": ["BURST_NLI_REQUIRE_PROMETHEUS=1", "make test"],
    "sudo apt-get install -y prometheus prometheus-pushgateway": ["apt-get install", "prometheus", "prometheus-pushgateway"],
}


def _not_here(c: Command) -> bool:
    if any(c.doc == doc and c.text == text for doc, text in NOT_HERE_COMMANDS):
        return True
    return any(c in block(doc, first) for doc, first in NOT_HERE_BLOCKS)


# --- running commands as a reader would --------------------------------------------------------


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "API_KEY", "MODEL_NAME"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def sh(text: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["bash", "-c", text], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip
    assert done.returncode == 0, f"`{text}` exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}"
    return done


@contextmanager
def background(text: str, cwd: Path, name: str) -> Iterator[subprocess.Popen[bytes]]:
    """``text`` running in its own process group; SIGTERM to the group on leaving."""
    log = cwd / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(["bash", "-c", text], cwd=cwd, env=_env(), stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process.returncode not in (0, -signal.SIGTERM):
            print(log.read_text(errors="replace")[-3000:])


def wait_for(url: str, process: subprocess.Popen[bytes], *, status: int = 200, within_s: float = 120) -> None:
    """Poll ``url`` (another process's readiness: nothing to wait on but its port) until ``status``."""
    deadline = time.monotonic() + within_s
    while True:
        assert process.poll() is None, f"the server exited {process.returncode} before {url} answered"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == status:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        assert time.monotonic() < deadline, f"{url} never answered {status}"
        time.sleep(0.2)


def poll_json(text: str, cwd: Path, until: str, within_s: float = 60) -> dict:
    """Run ``text`` (a status query) until its JSON ``status`` is ``until``."""
    deadline = time.monotonic() + within_s
    while True:
        got = json.loads(sh(text, cwd).stdout)
        if got.get("status") == until or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


# --- the scenarios ---------------------------------------------------------------------------


def test_every_command_is_run_or_says_why_not() -> None:
    run_here = {c for scenario in SCENARIOS for c in scenario()}
    ci = (ROOT / ".ci" / "run").read_text()
    for blocks in ALL_BLOCKS.values():
        for c in (c for commands in blocks for c in commands):
            if c.text in BY_CI_SCRIPT:
                missing = [needle for needle in BY_CI_SCRIPT[c.text] if needle not in ci]
                assert not missing, f"{c.doc}:{c.line}: `{c.text}` is not run by .ci/run ({missing})"
                continue
            assert c in run_here or _not_here(c), (
                f"{c.doc}:{c.line}: `{c.text}` is neither run by tests/test_docs.py nor listed in NOT_HERE"
            )


def serverless_commands() -> list[Command]:
    return block("API.md", "python -m worker serverless")[1:]


def test_the_serverless_worker_runs_a_test_input(tmp_path: Path) -> None:
    test_input, _ = serverless_commands()
    done = sh(test_input.text, tmp_path, timeout=180)
    assert "Job result" in done.stdout + done.stderr and "temporal_category" in done.stdout + done.stderr


def test_the_sdk_local_api_serves_on_port_8000(tmp_path: Path) -> None:
    _, serve_api = serverless_commands()
    with background(serve_api.text, tmp_path, "rp_serve_api") as process:
        wait_for("http://localhost:8000/docs", process)
        job = {"input": {"operation": "classify", "headline": "Fed Raises Rates"}}
        request = urllib.request.Request("http://localhost:8000/runsync", data=json.dumps(job).encode(),
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "COMPLETED" and "is_opinion" in body["output"]


def emulator_commands() -> list[Command]:
    return block("TRACES.md", "python -m loadtest emulate-runpod --port 8080")


def test_the_local_runpod_queue_serves_a_job_to_a_real_worker(tmp_path: Path) -> None:
    emulator, env_line, worker, submit, status = emulator_commands()
    with background(emulator.text, tmp_path, "emulator") as queue:
        wait_for("http://localhost:8080/v2/local/health", queue)
        with background(f"{env_line.text}; {worker.text}", tmp_path, "worker"):
            job = json.loads(sh(submit.text, tmp_path).stdout)
            assert job["status"] == "IN_QUEUE"
            ended = poll_json(status.text.replace("<id>", job["id"]), tmp_path, "COMPLETED", within_s=120)
            assert ended["status"] == "COMPLETED" and "is_opinion" in ended["output"]


def pod_commands() -> list[Command]:
    return [command("API.md", "MODEL_NAME=synthetic:tiny API_KEY=change-me python -m worker pod"),
            *block("README.md", "export API_KEY=s3cret;")]  # fmt: skip


def test_the_pod_one_liner_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    pod = pod_commands()[0]
    with background(pod.text, tmp_path, "pod") as process:
        wait_for("http://localhost:8000/ping", process)
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=60) == 0


def _same_shape(shown: str, got: str, ids: dict[str, str]) -> None:
    """The output a console block shows, against what the command printed: JSON by its keys,
    statuses and errors (ids, times and scores differ run to run); other lines by their words."""
    if shown.startswith("{"):
        body, _, trailer = shown.rpartition("}")
        expected = json.loads((body + "}").replace("{…}", "{}"))
        answer, _, got_trailer = got.rpartition("}")
        actual = json.loads(answer + "}")
        assert trailer == got_trailer.strip()
        assert set(actual) == set(expected), (shown, got)
        for key in ("status", "error"):
            assert actual.get(key) == expected.get(key), (shown, got)
        if isinstance(expected.get("output"), dict):
            assert set(actual["output"]) == set(expected["output"])
        if "id" in expected:
            ids[expected["id"]] = actual["id"]
        return
    for line in shown.splitlines():
        assert line.rsplit(" ", 1)[0] in got, (line, got)


def test_the_pod_session_prints_what_the_readme_shows(tmp_path: Path) -> None:
    start, *session = pod_commands()[1:]
    key = re.search(r"export API_KEY=(\S+?);", start.text)
    assert key is not None
    with background(start.text.rstrip(" &"), tmp_path, "pod") as process:
        wait_for("http://localhost:8000/ping", process)
        ids: dict[str, str] = {}
        for c in session:
            text = f"export API_KEY={key[1]}; {c.text}"
            for shown_id, real_id in ids.items():
                text = text.replace(shown_id, real_id)
            if "/status/" in c.text:
                got = json.dumps(poll_json(text, tmp_path, "COMPLETED"))
            else:
                got = sh(text, tmp_path).stdout
            _same_shape(c.shown.replace("04458578-…", "04458578-a01b-4d42-a679-01edb93bc2c7"), got, ids)


def trace_commands() -> list[Command]:
    return block("TRACES.md", "python -m loadtest generate --out day.jsonl")


def test_the_trace_commands_generate_and_replay(tmp_path: Path) -> None:
    generate, from_feed, replay = trace_commands()
    sh(generate.text, tmp_path)
    (tmp_path / "news.jsonl").write_text((ROOT / "tests" / "data" / "benzinga_headlines_2025-08-14_18.jsonl").read_text())
    sh(from_feed.text, tmp_path)
    assert (tmp_path / "feed.jsonl").stat().st_size > 0
    done = sh(replay.text, tmp_path, timeout=300)
    assert "completed, 0 failed, 0 rejected" in done.stdout
    summary = json.loads((tmp_path / "runs" / "day" / "summary.json").read_text())
    assert summary["completed"] == summary["jobs"] > 0


def bake_commands() -> list[Command]:
    return [command("DEPLOYMENT.md", "python -m worker bake-model --model synthetic:tiny")]


def test_bake_model_writes_a_loadable_directory(tmp_path: Path) -> None:
    (bake,) = bake_commands()
    sh(bake.text, tmp_path, timeout=180)
    assert (tmp_path / "model" / "config.json").is_file()


def client_commands() -> list[Command]:
    return block("CLIENT.md", "pip install /path/to/burst-nli/client")


def test_the_client_installs_without_torch(tmp_path: Path) -> None:
    venv = tmp_path / "client-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    activate = f"source {venv}/bin/activate; "
    for c in client_commands():
        sh(activate + c.text.replace("/path/to/burst-nli", str(ROOT)), tmp_path, timeout=300)
    probe = (
        "import sys, burst_nli_client; from burst_nli_client import Client, JobView;"
        " assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    sh(activate + f'python -c "{probe}"', tmp_path)
    no_torch = subprocess.run(["bash", "-c", activate + 'python -c "import torch"'], cwd=tmp_path, env=_env(),
                              capture_output=True, check=False)  # fmt: skip
    assert no_torch.returncode != 0, "the client's environment must not hold torch"


SCENARIOS = [serverless_commands, emulator_commands, pod_commands, trace_commands, bake_commands, client_commands]


@pytest.fixture(autouse=True)
def _ports_8000_and_8080_are_free() -> None:
    """The docs' fixed ports: a server left over would answer for the one under test."""
    import socket

    for port in (8000, 8080):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"something already listens on port {port}"
