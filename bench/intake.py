"""Intake's accepted applications per second and latency under wrk, against the bare FastAPI baseline."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench import stats, system
from bench.load import WrkSettings, wrk

WARM_UP = WrkSettings(seconds=3)


def run(
    workdir: Path, settings: WrkSettings, rounds: int = 2, profile: Path | None = None, python: str = sys.executable
) -> tuple[dict[str, Any], dict[str, float]]:
    """Load intake (one process, with its broker) and the baseline alternately, ``rounds`` times each with the same
    wrk settings; the best round of each counts (other load on the machine only ever slows a round down).

    Both run with ``python``. Returns the figures and intake's peak RSS. With ``profile`` (a directory), py-spy
    samples intake's last round into ``intake.txt`` there.
    """
    body = system.application_body(workdir / "application.json")
    intake_rounds: list[dict[str, Any]] = []
    bare_rounds: list[dict[str, Any]] = []
    with system.running(workdir / "intake", ["intake"], python) as stack:
        token = system.portal_key(stack)
        url = stack.url("intake")
        with system.bare_intake(python) as bare_url:
            wrk(url, body, token, WARM_UP)
            wrk(bare_url, body, token, WARM_UP)
            for index in range(rounds):
                bare_rounds.append(wrk(bare_url, body, token, settings))
                out = profile / "intake.txt" if profile is not None and index == rounds - 1 else None
                with system.profiled(stack.processes["intake"].pid, out, settings.seconds):
                    intake_rounds.append(wrk(url, body, token, settings))
        rss = system.service_rss(stack)
    best = max(intake_rounds, key=lambda r: r["rate"])
    bare = max(bare_rounds, key=lambda r: r["rate"])
    return {
        "rate": best["rate"],
        "baseline": bare["rate"],
        "ratio": stats.ratio(best["rate"], bare["rate"]),
        "p50_ms": best["p50_ms"],
        "p99_ms": best["p99_ms"],
        "baseline_p50_ms": bare["p50_ms"],
        "baseline_p99_ms": bare["p99_ms"],
        "rejected": sum(r["rejected"] + r["socket_errors"] for r in intake_rounds),
        "rounds": [round(r["rate"], 1) for r in intake_rounds],
        "baseline_rounds": [round(r["rate"], 1) for r in bare_rounds],
        "wrk": {"threads": settings.threads, "connections": settings.connections, "seconds": settings.seconds},
    }, rss
