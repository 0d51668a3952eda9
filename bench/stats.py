"""The arithmetic of the benchmark: percentiles, ratios, the shape of ``results.json`` and its table."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

# The keys results.json must have (more are welcome); each figure is a number.
REQUIRED: dict[str, tuple[str, ...]] = {
    "intake": ("rate", "baseline", "ratio", "p50_ms", "p99_ms"),
    "routing": ("rate", "baseline", "ratio"),
    "e2e": ("rate", "seconds", "p50_ms", "p95_ms", "p99_ms", "accepted", "lost"),
    "audit": ("appends_per_s", "verify_1m_s"),
    "rss_mb": ("intake", "routing", "notify", "audit"),
}

# SPEC §9, as (section, key, comparison, bar).
BARS: tuple[tuple[str, str, str, float], ...] = (
    ("intake", "ratio", ">=", 0.5),
    ("routing", "ratio", ">=", 0.5),
    ("e2e", "p99_ms", "<=", 100.0),
    ("e2e", "lost", "<=", 0),
    ("audit", "appends_per_s", ">=", 5000.0),
    ("audit", "verify_1m_s", "<=", 10.0),
    ("rss_mb", "intake", "<=", 150.0),
    ("rss_mb", "routing", "<=", 150.0),
    ("rss_mb", "notify", "<=", 150.0),
    ("rss_mb", "audit", "<=", 150.0),
)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) of ``values``, nearest-rank: a value that was actually observed, and the
    conservative choice for tail latencies (p99 of 100 values is the 99th smallest, not an interpolation)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ratio(rate: float, baseline: float) -> float:
    """``rate`` as a fraction of ``baseline`` (0 when the baseline did nothing, so no bar is met by accident)."""
    return rate / baseline if baseline > 0 else 0.0


def missing_keys(results: Mapping[str, Any]) -> list[str]:
    """The required ``section.key`` names that ``results`` lacks or holds no number for."""
    missing = []
    for section, keys in REQUIRED.items():
        values = results.get(section, {})
        for key in keys:
            value = values.get(key) if isinstance(values, Mapping) else None
            if isinstance(value, bool) or not isinstance(value, int | float):
                missing.append(f"{section}.{key}")
    return missing


def bar_met(value: float, comparison: str, bar: float) -> bool:
    """Whether ``value`` meets ``bar`` under ``comparison`` (">=" or "<=")."""
    if comparison == ">=":
        return value >= bar
    if comparison == "<=":
        return value <= bar
    raise ValueError(f"unknown comparison {comparison!r}")


def verdicts(results: Mapping[str, Any]) -> dict[str, bool]:
    """Each SPEC §9 bar that ``results`` has a figure for, as ``section.key`` → met."""
    return {
        f"{section}.{key}": bar_met(float(results[section][key]), comparison, bar)
        for section, key, comparison, bar in BARS
        if key in results.get(section, {})
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def table(results: Mapping[str, Any]) -> str:
    """A Markdown table of the figures with their bars: what ``make bench`` prints and the README shows."""
    bars = {(section, key): f"{comparison} {_fmt(bar)}" for section, key, comparison, bar in BARS}
    met = verdicts(results)
    lines = ["| figure | value | baseline | bar | met |", "|---|---|---|---|---|"]
    for section, keys in REQUIRED.items():
        values = results.get(section, {})
        for key in keys:
            if key not in values or key == "baseline":
                continue
            baseline = values.get("baseline") if key == "rate" else None
            verdict = met.get(f"{section}.{key}")
            lines.append(
                f"| {section} {key} | {_fmt(values[key])} | {'' if baseline is None else _fmt(baseline)} "
                f"| {bars.get((section, key), '')} | {'' if verdict is None else ('yes' if verdict else 'NO')} |"
            )
    return "\n".join(lines)
