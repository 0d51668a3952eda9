"""The benchmark's arithmetic: percentiles, ratios, the results' shape and the table (not timed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import stats


def complete() -> dict[str, Any]:
    return {
        "intake": {"rate": 300.0, "baseline": 500.0, "ratio": 0.6, "p50_ms": 20.0, "p99_ms": 80.0},
        "routing": {"rate": 2000.0, "baseline": 5000.0, "ratio": 0.4},
        "e2e": {"rate": 500.0, "seconds": 60.0, "p50_ms": 10.0, "p95_ms": 30.0, "p99_ms": 90.0,
                "accepted": 30000, "lost": 0},
        "audit": {"appends_per_s": 12000.0, "verify_1m_s": 7.5},
        "rss_mb": {"intake": 120.0, "routing": 110.0, "notify": 151.0, "audit": 100.0},
    }


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert stats.percentile(values, 50) == 50
    assert stats.percentile(values, 99) == 99
    assert stats.percentile(values, 100) == 100
    assert stats.percentile(values, 0) == 1
    assert stats.percentile([5.0, 1.0, 3.0], 50) == 3  # unsorted input
    # Few values: the tail is the worst one observed, never an interpolation below it.
    assert stats.percentile([1.0, 2.0, 3.0, 400.0], 99) == 400


def test_percentile_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="no values"):
        stats.percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        stats.percentile([1.0], 101)


def test_ratio_of_a_dead_baseline_meets_no_bar() -> None:
    assert stats.ratio(300, 600) == 0.5
    assert stats.ratio(300, 0) == 0.0


def test_missing_keys_names_each_absent_or_non_numeric_figure() -> None:
    assert stats.missing_keys(complete()) == []
    broken = complete()
    del broken["routing"]["baseline"]
    broken["e2e"]["lost"] = None
    broken["audit"]["verify_1m_s"] = True  # a bool is no measurement
    del broken["rss_mb"]
    assert stats.missing_keys(broken) == [
        "routing.baseline", "e2e.lost", "audit.verify_1m_s",
        "rss_mb.intake", "rss_mb.routing", "rss_mb.notify", "rss_mb.audit",
    ]


def test_verdicts_apply_the_bars_of_spec_section_9() -> None:
    verdicts = stats.verdicts(complete())
    assert verdicts["intake.ratio"] is True
    assert verdicts["routing.ratio"] is False
    assert verdicts["e2e.p99_ms"] is True
    assert verdicts["e2e.lost"] is True
    assert verdicts["rss_mb.notify"] is False
    assert verdicts["audit.verify_1m_s"] is True
    assert stats.verdicts({"e2e": {"lost": 1}}) == {"e2e.lost": False}


def test_table_shows_each_figure_with_baseline_bar_and_verdict() -> None:
    table = stats.table(complete()).splitlines()
    assert table[0] == "| figure | value | baseline | bar | met |"
    assert "| intake rate | 300 | 500 |  |  |" in table
    assert "| routing ratio | 0.40 |  | >= 0.50 | NO |" in table
    assert "| audit verify_1m_s | 7.50 |  | <= 10.00 | yes |" in table
    assert not any(row.startswith("| intake baseline") for row in table)


def test_committed_results_have_the_required_shape() -> None:
    results = json.loads((Path(__file__).parents[2] / "bench" / "results.json").read_text(encoding="utf-8"))
    assert stats.missing_keys(results) == []
