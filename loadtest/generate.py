"""``python -m loadtest generate``: write a trace shaped like the news feed, or built from a real one.

Synthetic traces follow the burst shape of ``loadtest.arrivals`` over a window of clock time (US
Eastern, so :10/:40 and the 06:00–11:00 peak hours land where the feed puts them); ``--from-feed``
instead places each article of a JSON Lines news export at its own publication time. Either way
each article becomes one job, its operation drawn in the ``--mix``'s exact shares. The same
arguments and ``--seed`` always write the same file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec

from loadtest.arrivals import EASTERN, arrival_times, default_peak_minute
from loadtest.job_inputs import COMPANIES, DEFAULT_MIX, Article, job_inputs, parse_mix, random_article
from schemas.trace import TraceHeader, TraceJob, new_header, write_trace

REFERENCE_DATE = dt.date(2025, 8, 14)
"""The day a bare ``--start HH:MM`` falls on (a Thursday; the real feed sample's first day), so
a trace's header is as reproducible as its jobs."""


class FeedArticle(msgspec.Struct):
    """One line of a news export such as ``benzinga_headlines_*.jsonl`` (other fields ignored)."""

    published_time: str
    headline: str
    tickers: list[str] = []


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="PATH", help="trace file to write (replaced)")
    parser.add_argument("--duration", help="length of feed: 90 or 90m (minutes), 30s, 2h (default: 60 "
                        "minutes; with --from-feed: the whole feed)")
    parser.add_argument("--start", help="clock time the trace starts at: HH:MM (US Eastern, on "
                        f"{REFERENCE_DATE}; with --from-feed, on the feed's first day) or an ISO 8601 time "
                        "(US Eastern unless it has an offset). Default: 06:00; with --from-feed, the "
                        "minute of the earliest article")
    parser.add_argument("--peak", default="auto", help="HH:MM of the 339-article minute; 'auto' (default): the "
                        "first :10/:40 minute in peak hours within the trace; 'none': no peak minute")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--mix", default=DEFAULT_MIX, help="operation shares, e.g. classify=0.7,"
                        "company_relevance=0.3 (normalised; default: %(default)s)")
    parser.add_argument("--speed", type=_positive_float, default=1.0,
                        help="time compression: t is divided by this (default: %(default)s)")
    parser.add_argument("--from-feed", metavar="JSONL", help="build the trace from a news export with "
                        "published_time, headline and tickers; articles keep their time of day, days "
                        "are laid over the first one")
    parser.add_argument("--name", help="trace name in the header (default: the output file's stem)")
    parser.add_argument("--description", help="header description (default: how it was generated)")


def run(args: argparse.Namespace) -> int:
    try:
        mix = parse_mix(args.mix)
        duration_s = parse_duration(args.duration) if args.duration else None
        name = args.name or Path(args.out).stem
        if args.from_feed:
            header, jobs = feed_trace(
                Path(args.from_feed), start=args.start, duration_s=duration_s, seed=args.seed, mix=mix,
                speed=args.speed, name=name, description=args.description,
            )  # fmt: skip
        else:
            header, jobs = generate_trace(
                parse_start(args.start or "06:00"), duration_s or 3600.0, seed=args.seed, mix=mix, peak=args.peak, speed=args.speed,
                name=name, description=args.description,
            )  # fmt: skip
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    count = write_trace(args.out, header, jobs)
    last = f", the last at t={jobs[-1].t:g} s" if jobs else ""
    print(f"wrote {count} jobs to {args.out}{last}")
    return 0


def generate_trace(
    start: dt.datetime,
    duration_s: float,
    *,
    seed: int,
    mix: dict[str, float],
    peak: str = "auto",
    speed: float = 1.0,
    name: str = "generated",
    description: str | None = None,
) -> tuple[TraceHeader, list[TraceJob]]:
    """A synthetic feed from ``start`` (aware) for ``duration_s``: header and jobs."""
    if duration_s <= 0:
        raise ValueError(f"--duration: must be positive, got {duration_s:g} s")
    peak_minute = _peak_minute(peak, start, duration_s)
    rng = random.Random(seed)
    times = arrival_times(start, duration_s, rng, peak_minute=peak_minute)
    inputs = job_inputs([random_article(rng) for _ in times], mix, rng)
    if description is None:
        peak_text = peak_minute.astimezone(EASTERN).strftime("%H:%M") if peak_minute else "none"
        description = (
            f"news-feed bursts at :10/:40 from {_eastern(start)} for {duration_s / 60:g} min "
            f"(peak minute {peak_text}; seed {seed}; mix {_mix_text(mix)}){_speed_text(speed)}"
        )
    return _header(name, description, start), _jobs(times, inputs, speed)


def feed_trace(
    path: Path,
    *,
    start: str | None = None,
    duration_s: float | None = None,
    seed: int = 0,
    mix: dict[str, float],
    speed: float = 1.0,
    name: str = "feed",
    description: str | None = None,
) -> tuple[TraceHeader, list[TraceJob]]:
    """One job per article of a news export, at the article's time of day on the first day."""
    articles = read_feed(path)
    if not articles:
        raise ValueError(f"{path}: no articles")
    first_day = min(when.astimezone(EASTERN).date() for when, _ in articles)
    placed = sorted(
        ((dt.datetime.combine(first_day, when.astimezone(EASTERN).time(), tzinfo=EASTERN), article)
         for when, article in articles),
        key=lambda pair: pair[0],
    )  # fmt: skip
    origin = parse_start(start, day=first_day) if start else placed[0][0].replace(second=0, microsecond=0)
    kept = [
        (t, article)
        for when, article in placed
        if 0 <= (t := (when - origin).total_seconds()) and (duration_s is None or t < duration_s)
    ]
    if not kept:
        raise ValueError(f"{path}: no article falls within the trace's window")
    rng = random.Random(seed)
    inputs = job_inputs([_feed_article(article) for _, article in kept], mix, rng)
    if description is None:
        days = sorted({when.astimezone(EASTERN).date().isoformat() for when, _ in articles})
        description = (
            f"{len(kept)} articles of {path.name} at their publication times of day, "
            f"{', '.join(days)} laid over one day from {_eastern(origin)} (seed {seed}; mix {_mix_text(mix)})"
            f"{_speed_text(speed)}"
        )
    return _header(name, description, origin), _jobs([t for t, _ in kept], inputs, speed)


def read_feed(path: Path) -> list[tuple[dt.datetime, FeedArticle]]:
    """(publication time, article) for each line; raises ValueError naming a bad line."""
    decoder = msgspec.json.Decoder(FeedArticle)
    try:
        lines = path.read_bytes().splitlines()
    except OSError as err:
        raise ValueError(f"{path}: cannot read: {err.strerror or err}") from err
    articles = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            article = decoder.decode(line)
            when = dt.datetime.fromisoformat(article.published_time)
        except (msgspec.DecodeError, ValueError) as err:
            raise ValueError(f"{path}:{number}: expected a feed article with published_time, headline: {err}") from err
        articles.append((when if when.tzinfo else when.replace(tzinfo=dt.UTC), article))
    return articles


def parse_start(text: str, *, day: dt.date = REFERENCE_DATE) -> dt.datetime:
    """``HH:MM[:SS]`` on ``day`` or an ISO 8601 time; US Eastern unless an offset is given."""
    if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", text):
        return dt.datetime.combine(day, _clock(text, "--start"), tzinfo=EASTERN)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError as err:
        raise ValueError(f"--start: expected HH:MM or an ISO 8601 time, got {text!r}") from err
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=EASTERN)


def parse_duration(text: str) -> float:
    """Seconds in ``90`` / ``90m`` (minutes), ``30s`` or ``1.5h``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise ValueError(f"--duration: expected minutes (90, 90m), 30s or 2h, got {text!r}")
    value = float(match[1]) * {"s": 1, "m": 60, "": 60, "h": 3600}[match[2]]
    if value <= 0:
        raise ValueError(f"--duration: must be positive, got {text!r}")
    return value


def _peak_minute(peak: str, start: dt.datetime, duration_s: float) -> dt.datetime | None:
    if peak == "none":
        return None
    if peak == "auto":
        return default_peak_minute(start, duration_s)
    if not re.fullmatch(r"\d{1,2}:\d{2}", peak):
        raise ValueError(f"--peak: expected HH:MM, auto or none, got {peak!r}")
    clock = _clock(peak, "--peak")
    local = start.astimezone(EASTERN)
    for day in (local.date(), local.date() + dt.timedelta(days=1)):
        candidate = dt.datetime.combine(day, clock, tzinfo=EASTERN)
        if start <= candidate < start + dt.timedelta(seconds=duration_s):
            return candidate
    raise ValueError(f"--peak: {peak} is not a whole minute within the trace")


def _clock(text: str, option: str) -> dt.time:
    try:
        return dt.time(*map(int, text.split(":")))
    except ValueError as err:
        raise ValueError(f"{option}: not a clock time: {text!r}") from err


_COMPANY_BY_TICKER = {ticker: name for name, ticker in COMPANIES}


def _feed_article(article: FeedArticle) -> Article:
    tickers = tuple(t for t in article.tickers if re.fullmatch(r"[A-Z0-9.\-]{1,10}", t))
    company = _COMPANY_BY_TICKER.get(tickers[0], tickers[0]) if tickers else None
    return Article(article.headline, tickers, company)


def _jobs(times: Sequence[float], inputs: Sequence[dict], speed: float) -> list[TraceJob]:
    return [TraceJob(t=round(t / speed, 4), input=job) for t, job in zip(times, inputs, strict=True)]


def _header(name: str, description: str, start: dt.datetime) -> TraceHeader:
    created = start.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return new_header(name, description, created=created)


def _eastern(when: dt.datetime) -> str:
    return when.astimezone(EASTERN).strftime("%Y-%m-%d %H:%M:%S US Eastern")


def _mix_text(mix: dict[str, float]) -> str:
    return ",".join(f"{name}={share:g}" for name, share in mix.items())


def _speed_text(speed: float) -> str:
    return f"; time compressed {speed:g}x" if speed != 1 else ""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value
