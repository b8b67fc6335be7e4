"""When articles arrive: the news feed's burst shape, minute by minute, as a pure function.

The headline service's specification gives the shape: bursts of 50–100 articles at :10 and :40
past the hour, most of them within the first seconds of that minute; a peak of 339 articles in
one minute; a quiet trickle in between; more of everything in the peak hours, 06:00–11:00 US
Eastern. ``arrival_times`` turns a clock window into arrival times with a seeded ``Random``, so a
seed always gives the same trace.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass
from zoneinfo import ZoneInfo

EASTERN = ZoneInfo("America/New_York")
BURST_MINUTES = (10, 40)
PEAK_ARTICLES = 339
PEAK_HOURS = (6, 11)
"""US Eastern hours [start, end) in which bursts run larger and the background is busier."""


@dataclass(frozen=True, slots=True)
class Shape:
    """The numbers behind the feed's shape; the defaults are the specification's."""

    burst_articles_peak_hours: tuple[int, int] = (70, 100)
    burst_articles_off_hours: tuple[int, int] = (50, 80)
    quiet_per_minute_peak_hours: float = 2.0
    quiet_per_minute_off_hours: float = 0.5
    burst_head_share: float = 0.85
    """Share of a burst's articles in its first seconds; the rest spread over the minute."""
    burst_head_mean_s: float = 2.5
    """Mean offset into the minute of the head's articles (exponential)."""


def in_peak_hours(clock: dt.datetime) -> bool:
    return PEAK_HOURS[0] <= clock.astimezone(EASTERN).hour < PEAK_HOURS[1]


def is_burst_minute(clock: dt.datetime) -> bool:
    return clock.astimezone(EASTERN).minute in BURST_MINUTES


def default_peak_minute(start: dt.datetime, duration_s: float) -> dt.datetime | None:
    """The first :10/:40 minute inside peak hours that starts within the window, if any."""
    for minute in _minutes(start, duration_s):
        if minute >= start and is_burst_minute(minute) and in_peak_hours(minute):
            return minute
    return None


def minute_count(clock: dt.datetime, rng: random.Random, *, peak: bool, shape: Shape = Shape()) -> int:
    """Articles in the minute starting at ``clock``."""
    if peak:
        return PEAK_ARTICLES
    busy = in_peak_hours(clock)
    if is_burst_minute(clock):
        low, high = shape.burst_articles_peak_hours if busy else shape.burst_articles_off_hours
        return rng.randint(low, high)
    return _poisson(shape.quiet_per_minute_peak_hours if busy else shape.quiet_per_minute_off_hours, rng)


def offsets_in_minute(count: int, burst: bool, rng: random.Random, shape: Shape = Shape()) -> list[float]:
    """Sorted offsets (seconds, in [0, 60)) of ``count`` articles within one minute."""
    offsets = []
    for _ in range(count):
        if burst and rng.random() < shape.burst_head_share:
            offsets.append(min(rng.expovariate(1 / shape.burst_head_mean_s), 59.999))
        else:
            offsets.append(rng.uniform(0, 60))
    return sorted(offsets)


def arrival_times(
    start: dt.datetime,
    duration_s: float,
    rng: random.Random,
    *,
    peak_minute: dt.datetime | None,
    shape: Shape = Shape(),
) -> list[float]:
    """Arrival times (seconds from ``start``, sorted) over ``duration_s`` of feed.

    ``start`` is timezone-aware; ``peak_minute`` (a whole minute, or ``None``) holds the
    339-article peak instead of its usual count.
    """
    times: list[float] = []
    for minute in _minutes(start, duration_s):
        peak = peak_minute is not None and minute == peak_minute
        count = minute_count(minute, rng, peak=peak, shape=shape)
        base = (minute - start).total_seconds()
        burst = peak or is_burst_minute(minute)
        times.extend(
            round(base + offset, 3)
            for offset in offsets_in_minute(count, burst, rng, shape)
            if 0 <= base + offset < duration_s
        )
    return times


def _minutes(start: dt.datetime, duration_s: float) -> list[dt.datetime]:
    """Every whole clock minute that overlaps [start, start + duration_s)."""
    first = start.replace(second=0, microsecond=0)
    count = math.ceil(((start - first).total_seconds() + duration_s) / 60)
    return [first + dt.timedelta(minutes=i) for i in range(count)]


def _poisson(mean: float, rng: random.Random) -> int:
    """Knuth's method: fine for the small means of a quiet minute."""
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count
