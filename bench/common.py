"""What the benchmarks share: the seed's two ways of calling the pipeline, rows and the machine.

``bench/engine.py`` (CPU, in process) and ``bench/gpu.py`` (every way side by side) must time the
baselines the same way, or their ratios would not compare.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch
from transformers import pipeline

from worker import hypotheses
from worker.model import NliModel

LABELS = [hypotheses.OPINION, hypotheses.STRAIGHT_NEWS, *hypotheses.TEMPORAL.values()]
PAIRS_PER_JOB = 6
"""A classify job with a company: five label hypotheses plus one company hypothesis."""


def seed_way(model: NliModel, jobs: list[dict]) -> dict:
    """One pipeline call per headline for the labels, one for the company."""
    classifier = pipeline("zero-shot-classification", model=model.model, tokenizer=model.tokenizer,
                          device=model.device)
    classifier(jobs[0]["headline"], candidate_labels=LABELS, hypothesis_template="{}")  # warm
    started = time.perf_counter()
    for job in jobs:
        classifier(job["headline"], candidate_labels=LABELS, hypothesis_template="{}")
        company = hypotheses.COMPANY.format(company=job["company"])
        classifier(job["headline"], candidate_labels=[company], hypothesis_template="{}", multi_label=True)
    wall = time.perf_counter() - started
    return row("seed way: pipeline per headline, fp32", len(jobs), wall)


def careful_pipeline(model: NliModel, jobs: list[dict]) -> dict:
    """The same pipeline over the list, batch_size=64; company calls grouped by company."""
    classifier = pipeline("zero-shot-classification", model=model.model, tokenizer=model.tokenizer,
                          device=model.device)
    texts = [job["headline"] for job in jobs]
    classifier(texts[:8], candidate_labels=LABELS, hypothesis_template="{}", batch_size=64)  # warm
    started = time.perf_counter()
    classifier(texts, candidate_labels=LABELS, hypothesis_template="{}", batch_size=64)
    by_company: dict[str, list[str]] = {}
    for job in jobs:
        by_company.setdefault(job["company"], []).append(job["headline"])
    for company, group in by_company.items():
        label = hypotheses.COMPANY.format(company=company)
        classifier(group, candidate_labels=[label], hypothesis_template="{}", multi_label=True, batch_size=64)
    wall = time.perf_counter() - started
    return row(f"careful pipeline: list, batch_size=64, {dtype_name(model)}", len(jobs), wall)


def row(way: str, jobs: int, wall: float, *, pairs: int | None = None, batches: int | None = None,
        efficiency: float | None = None, p99_ms: float | None = None) -> dict:
    """One way's burst: wall time, throughput and, for the engine, its batches."""
    pairs = pairs if pairs is not None else PAIRS_PER_JOB * jobs
    return {
        "way": way, "jobs": jobs, "pairs": pairs, "wall_ms": round(wall * 1000, 1),
        "pairs_per_s": round(pairs / wall, 1), "batches": batches,
        "mean_batch_pairs": round(pairs / batches, 1) if batches else None,
        "padding_efficiency": round(efficiency, 3) if efficiency is not None else None,
        "p99_ms": p99_ms,
    }


def dtype_name(model: NliModel) -> str:
    return str(model.dtype).removeprefix("torch.")


def machine_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and the threads torch uses: what a table ran on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def cpu_model() -> str:
    """``model name`` from /proc/cpuinfo (``platform.processor()`` is empty on most Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def publish(out: Path | None, name: str, header: str, table: str, data: dict) -> None:
    """Print a benchmark's header and Markdown table; with ``out``, also write ``<name>.md`` and
    ``<name>.json`` (the header and ``data``) there."""
    print(header)
    print(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps({"header": header, **data}, indent=2))
        (out / f"{name}.md").write_text(header + "\n\n" + table + "\n")


def median_bursts(runs: dict[str, list[dict]], jobs: int) -> list[dict]:
    """Each way's median burst by wall time (all of that burst's fields), with the spread of its
    walls: the rows of the scripts that alternate ways burst by burst (merge, padding)."""
    rows = []
    for way, samples in runs.items():
        median = sorted(samples, key=lambda sample: sample["wall_ms"])[(len(samples) - 1) // 2]
        walls = [sample["wall_ms"] for sample in samples]
        rows.append({"way": way, "jobs": jobs, **median, "wall_ms": round(median["wall_ms"], 1),
                     "wall_ms_spread": [round(min(walls), 1), round(max(walls), 1)]})  # fmt: skip
    return rows
