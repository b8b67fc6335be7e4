"""The locks in ``locks/`` still say what ``pyproject.toml`` asks for (run ``make lock`` when not).

Read offline: every requirement of the project (and of the extras a lock carries) is pinned in
that lock to a version inside its range, nothing the lock calls a direct requirement has left
``pyproject.toml``, every pin carries hashes, torch is the build its constraints file names, and
the CPU image installs exactly the versions CI tests.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "locks"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


@dataclass(frozen=True)
class Lock:
    file: str
    python: str
    extras: tuple[str, ...]
    constraints: str


LOCK_FILES = [
    Lock("dev.txt", "3.11", ("plots", "dev"), "constraints-cpu.txt"),
    Lock("image-cpu.txt", "3.11", (), "constraints-cpu.txt"),
    Lock("image-gpu.txt", "3.12", (), "constraints-gpu.txt"),
]
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)")
_HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def pins(path: Path) -> dict[str, str]:
    """``name -> version`` of each ``name==version`` line, refusing a pin without a hash."""
    found: dict[str, str] = {}
    entries = re.split(r"\n(?=\S)", path.read_text(encoding="utf-8"))
    for entry in entries:
        match = _PIN.match(entry)
        if match is None:
            continue
        assert _HASH.search(entry), f"{path.name}: {match['name']} is pinned without a hash"
        found[canonicalize_name(match["name"])] = match["version"]
    return found


def direct_in_lock(path: Path) -> set[str]:
    """Packages uv annotated as wanted by the project itself (``# via burst-nli (pyproject.toml)``)."""
    direct: set[str] = set()
    name = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if match := _PIN.match(line):
            name = canonicalize_name(match["name"])
        elif name and "burst-nli (pyproject.toml)" in line:
            direct.add(name)
    return direct


def requirements(lock: Lock) -> list[Requirement]:
    """The project's requirements for ``lock``'s extras and Python, the self-references unfolded."""
    environment = {**default_environment(), "python_version": lock.python, "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64"}  # fmt: skip
    wanted: list[Requirement] = []
    pending = [Requirement(text) for text in PROJECT["dependencies"]]
    for extra in lock.extras:
        pending += [Requirement(text) for text in PROJECT["optional-dependencies"][extra]]
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        if canonicalize_name(requirement.name) == canonicalize_name(PROJECT["name"]):
            for extra in requirement.extras:
                pending += [Requirement(text) for text in PROJECT["optional-dependencies"][extra]]
            continue
        wanted.append(requirement)
    return wanted


@pytest.mark.parametrize("lock", LOCK_FILES, ids=lambda lock: lock.file)
def test_every_requirement_is_pinned_inside_its_range(lock: Lock) -> None:
    pinned = pins(LOCKS / lock.file)
    for requirement in requirements(lock):
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{lock.file} does not pin {requirement}: run `make lock`"
        version = Version(pinned[name])
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock.file} pins {name}=={version}, outside pyproject.toml's {requirement}: run `make lock`"
        )


@pytest.mark.parametrize("lock", LOCK_FILES, ids=lambda lock: lock.file)
def test_no_removed_requirement_lingers(lock: Lock) -> None:
    wanted = {canonicalize_name(requirement.name) for requirement in requirements(lock)}
    stale = direct_in_lock(LOCKS / lock.file) - wanted
    assert not stale, f"{lock.file} still carries {sorted(stale)} for the project: run `make lock`"


@pytest.mark.parametrize("lock", LOCK_FILES, ids=lambda lock: lock.file)
def test_torch_is_the_build_its_constraints_name(lock: Lock) -> None:
    constraint = next(
        Requirement(line) for line in (LOCKS / lock.constraints).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )  # fmt: skip
    (wanted,) = constraint.specifier
    assert pins(LOCKS / lock.file)["torch"] == wanted.version


def test_the_cpu_image_installs_what_ci_tests() -> None:
    image, dev = pins(LOCKS / "image-cpu.txt"), pins(LOCKS / "dev.txt")
    differ = {name: (version, dev.get(name)) for name, version in image.items() if dev.get(name) != version}
    assert not differ, f"image-cpu.txt and dev.txt disagree (image, dev): {differ}: run `make lock`"


def test_the_gpu_image_takes_a_cuda_build_of_torch() -> None:
    gpu = pins(LOCKS / "image-gpu.txt")
    assert "+" not in gpu["torch"], "PyPI's Linux torch (a CUDA build), not a local-version build"
    assert any(name.startswith("nvidia-") for name in gpu), "its CUDA libraries come locked with it"


def test_the_client_distribution_asks_what_the_server_does() -> None:
    """``client/pyproject.toml`` installs alone; its ranges are the server's, so both lock alike."""
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    server = {canonicalize_name(r.name): r for r in map(Requirement, PROJECT["dependencies"])}
    for wanted in map(Requirement, client["dependencies"]):
        assert canonicalize_name(wanted.name) in server, f"client/pyproject.toml: {wanted.name} is no server dependency"
        assert wanted.specifier == server[canonicalize_name(wanted.name)].specifier, wanted.name
