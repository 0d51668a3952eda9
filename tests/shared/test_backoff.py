"""The one back-off rule: doubling from the base, capped, optionally with equal jitter."""

from __future__ import annotations

from shared.backoff import delay_s


def test_doubles_per_retry_up_to_the_cap() -> None:
    assert [delay_s(n, base_s=0.5, cap_s=10) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert delay_s(10_000, base_s=1, cap_s=60) == 60  # no overflow however long the outage


def test_equal_jitter_keeps_at_least_half_and_never_exceeds_the_delay() -> None:
    draws = [delay_s(4, base_s=1, cap_s=100, jitter=True) for _ in range(200)]
    assert all(4 <= d <= 8 for d in draws)
    assert len(set(draws)) > 100  # replicas don't retry in step
