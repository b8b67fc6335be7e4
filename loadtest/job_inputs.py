"""What the generated jobs ask: articles (real or templated headlines), the operation mix, inputs.

Half the articles carry a real headline (``loadtest.headlines``); the other half are written from
templates in the same style, with real companies, tickers and figures, so a long trace does not
repeat a few hundred strings. Every input built here decodes with ``schemas.DEFAULT_SCHEMA``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

from loadtest.headlines import headlines
from schemas import OPERATIONS

DEFAULT_MIX = "classify=0.6,company_relevance=0.1,routine_operations=0.1,detect_quantitative_catalyst=0.1,detect_strategic_catalyst=0.1"
"""One job an article, mostly the headline service's main call."""

COMPANIES: tuple[tuple[str, str], ...] = (
    ("Apple", "AAPL"), ("Microsoft", "MSFT"), ("Nvidia", "NVDA"), ("Tesla", "TSLA"), ("Amazon", "AMZN"),
    ("Alphabet", "GOOGL"), ("Meta Platforms", "META"), ("Bank of America", "BAC"), ("JPMorgan Chase", "JPM"),
    ("Dell Technologies", "DELL"), ("Deere", "DE"), ("Target", "TGT"), ("Home Depot", "HD"),
    ("Pfizer", "PFE"), ("Medtronic", "MDT"), ("Duke Energy", "DUK"), ("FirstEnergy", "FE"),
    ("Coinbase", "COIN"), ("DraftKings", "DKNG"), ("Shopify", "SHOP"), ("Palo Alto Networks", "PANW"),
    ("Accenture", "ACN"), ("Berkshire Hathaway", "BRK.B"), ("Exxon Mobil", "XOM"), ("Walmart", "WMT"),
    ("Boeing", "BA"), ("Intel", "INTC"), ("Advanced Micro Devices", "AMD"), ("Netflix", "NFLX"),
    ("Pinterest", "PINS"), ("Roblox", "RBLX"), ("Match Group", "MTCH"), ("Crocs", "CROX"),
    ("Cinemark Holdings", "CNK"), ("Flowers Foods", "FLO"), ("Ulta Beauty", "ULTA"), ("Zoetis", "ZTS"),
)  # fmt: skip

_PEOPLE = ("Sarah Chen", "Michael Ortiz", "David Park", "Laura Bennett", "James Whitaker", "Priya Nair")
_PRODUCTS = ("AI Platform", "Cloud Security Suite", "EV Charging Network", "Payments App", "Robotics Kit")
_TEMPLATES: tuple[str, ...] = (
    "{company} Declares ${dividend} Dividend",
    "{company} Raises Quarterly Dividend To ${dividend} Per Share",
    "{company} Q{quarter} EPS ${eps} Beats ${estimate} Estimate, Sales ${billions}B",
    "{company} Q{quarter} Adj. EPS ${eps} Misses ${estimate} Estimate",
    "{company} Announces ${billions}B Share Buyback Program",
    "{company} To Acquire {other} For ${billions}B, Or ${price}/Share",
    "{company} Raises FY{year} Revenue Guidance To ${billions}B",
    "{company} Cuts FY{year} Outlook, Shares Fall {percent}%",
    "{company} Names {person} As Chief Executive Officer",
    "{company} CFO {person} To Step Down",
    "{company} And {other} Announce Strategic Partnership",
    "{company} Launches New {product}",
    "{company} Files For Offering Of Up To ${millions}M Common Stock",
    "{company} Shares Trading Higher After Q{quarter} Results",
    "Why {company} Stock Is Falling Today",
    "Is {company} Stock A Buy After Its {percent}% Drop?",
    "Analyst Upgrades {company} To Buy, Raises Price Target To ${price}",
    "{company} Secures ${millions}M Contract With US Department of Defense",
)
_TOPIC_LABELS = (
    "earnings", "dividend", "merger or acquisition", "guidance", "management change", "legal",
    "product launch", "share offering", "analyst rating", "macro economy",
)  # fmt: skip
_NLI_HYPOTHESES = (
    "This news is about {company}.",
    "This headline reports a dividend.",
    "This headline reports quarterly earnings.",
    "The stock price is expected to rise.",
    "This is an opinion piece.",
)


@dataclass(frozen=True, slots=True)
class Article:
    headline: str
    tickers: tuple[str, ...]
    company: str | None
    """The company the headline is about, when known (templated headlines; feed tickers)."""


def parse_mix(text: str) -> dict[str, float]:
    """``classify=0.7,company_relevance=0.3`` → shares summing to 1 over known operations."""
    weights: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if name not in OPERATIONS:
            raise ValueError(f"--mix: unknown operation {name!r}; expected some of {', '.join(OPERATIONS)}")
        try:
            weight = float(value) if sep else 1.0
        except ValueError:
            raise ValueError(f"--mix: {name}: weight must be a number, got {value!r}") from None
        if not weight >= 0 or weight == float("inf"):
            raise ValueError(f"--mix: {name}: weight must be a finite number >= 0, got {value!r}")
        weights[name] = weights.get(name, 0.0) + weight
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("--mix: give at least one operation a weight above 0")
    return {name: weight / total for name, weight in weights.items() if weight > 0}


def assign_operations(count: int, mix: Mapping[str, float], rng: random.Random) -> list[str]:
    """``count`` operation names in exactly the mix's shares (largest remainder), shuffled."""
    exact = {name: share * count for name, share in mix.items()}
    counts = {name: int(value) for name, value in exact.items()}
    by_remainder = sorted(exact, key=lambda name: (counts[name] - exact[name], name))
    for name in by_remainder[: count - sum(counts.values())]:
        counts[name] += 1
    operations = [name for name in mix for _ in range(counts[name])]
    rng.shuffle(operations)
    return operations


def random_article(rng: random.Random) -> Article:
    """A real headline (about a random company, as far as relevance asks) or a templated one."""
    if rng.random() < 0.5:
        ticker = rng.choice(COMPANIES)[1]
        return Article(rng.choice(_real_headlines()), (ticker,), None)
    return templated_article(rng)


@cache
def _real_headlines() -> tuple[str, ...]:
    """The vendored headlines less the few all-caps section titles the source test suite has."""
    return tuple(h for h in headlines() if not h.isupper())


def templated_article(rng: random.Random) -> Article:
    (name, ticker), (other, _) = rng.sample(COMPANIES, 2)
    headline = rng.choice(_TEMPLATES).format(
        company=name,
        other=other,
        person=rng.choice(_PEOPLE),
        product=rng.choice(_PRODUCTS),
        dividend=f"{rng.randint(5, 250) / 100:.2f}",
        eps=f"{rng.randint(-50, 600) / 100:.2f}",
        estimate=f"{rng.randint(0, 550) / 100:.2f}",
        billions=f"{rng.randint(1, 400) / 10:.1f}",
        millions=rng.choice((5, 12, 25, 50, 100, 250, 500)),
        price=f"{rng.randint(500, 50000) / 100:.2f}",
        percent=rng.randint(2, 35),
        quarter=rng.randint(1, 4),
        year=rng.choice((25, 26)),
    )
    return Article(headline, (ticker,), name)


def job_input(operation: str, article: Article, rng: random.Random) -> dict:
    """A sensible input for ``operation`` about ``article`` (batch operations add more articles)."""
    company = article.company or rng.choice(COMPANIES)[0]
    if operation == "classify":
        job: dict = {"operation": operation, "headline": article.headline}
        if article.company is not None or rng.random() < 0.5:
            job["company"] = company
        return job
    if operation in ("classify_batch", "company_relevance_batch"):
        batch = [article.headline] + [random_article(rng).headline for _ in range(rng.randint(1, 7))]
        job = {"operation": operation, "headlines": batch}
        if operation == "company_relevance_batch" or rng.random() < 0.5:
            job["company"] = company
        return job
    if operation == "company_relevance":
        return {"operation": operation, "headline": article.headline, "company": company}
    if operation == "routine_operations":
        tickers = list(dict.fromkeys(article.tickers)) or [rng.choice(COMPANIES)[1]]
        return {"operation": operation, "headline": article.headline, "ticker_symbols": tickers}
    if operation in ("detect_quantitative_catalyst", "detect_strategic_catalyst"):
        return {"operation": operation, "headline": article.headline}
    if operation == "zero_shot":
        labels = rng.sample(_TOPIC_LABELS, rng.randint(3, 5))
        return {"operation": operation, "text": article.headline, "labels": labels, "multi_label": rng.random() < 0.3}
    if operation == "nli":
        hypotheses = rng.sample(_NLI_HYPOTHESES, rng.randint(1, 3))
        return {"operation": operation, "pairs": [[article.headline, h.format(company=company)] for h in hypotheses]}
    raise ValueError(f"unknown operation {operation!r}")


def job_inputs(articles: Sequence[Article], mix: Mapping[str, float], rng: random.Random) -> list[dict]:
    """One job an article, operations in the mix's shares."""
    operations = assign_operations(len(articles), mix, rng)
    return [job_input(op, article, rng) for op, article in zip(operations, articles, strict=True)]
