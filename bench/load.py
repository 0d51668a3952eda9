"""The HTTP load generator: Debian's ``wrk`` with ``post_application.lua``, posting valid applications, either as
fast as they are answered or at a fixed rate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).with_name("post_application.lua")


@dataclass(frozen=True)
class WrkSettings:
    """One wrk configuration; the service and its baseline are loaded with the same one."""

    threads: int = 1
    connections: int = 32
    seconds: int = 15
    timeout_s: int = 10
    # Requests per second in all; None: each connection sends its next request as soon as it has its answer.
    rate: float | None = None


def wrk(url: str, body: Path, token: str, settings: WrkSettings, cases_file: Path | None = None) -> dict[str, Any]:
    """Post applications to ``url`` for ``settings.seconds``; returns the script's counts and latencies, plus
    ``rate`` (accepted per second) and latencies in milliseconds.

    At a fixed ``settings.rate``, ``late`` counts the requests that left more than 100 ms behind their schedule
    because every connection was still waiting for an answer. With ``cases_file``, ``case_ids`` lists the ids of
    the accepted applications.
    """
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is not installed (make bench installs it: apt-get install wrk)")
    env = {**os.environ, "BENCH_BODY_FILE": str(body), "BENCH_TOKEN": token,
           "BENCH_KEY_PREFIX": uuid.uuid4().hex}
    if settings.rate is not None:
        env |= {"BENCH_RATE": str(settings.rate / settings.threads),
                "BENCH_CONNECTIONS": str(settings.connections // settings.threads)}
    if cases_file is not None:
        env["BENCH_CASES_FILE"] = str(cases_file)
    completed = subprocess.run(
        [binary, f"-t{settings.threads}", f"-c{settings.connections}", f"-d{settings.seconds}s",
         f"--timeout={settings.timeout_s}s", "-s", str(SCRIPT), url],
        env=env, capture_output=True, text=True, check=True, timeout=settings.seconds + 60,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"wrk printed no result: {completed.stdout[-500:]} {completed.stderr[-500:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    seconds = result["duration_us"] / 1e6
    result["rate"] = result["accepted"] / seconds
    for name in ("p50", "p90", "p95", "p99", "max"):
        result[f"{name}_ms"] = result[f"{name}_us"] / 1000
    if cases_file is not None:
        result["case_ids"] = [
            line for part in sorted(cases_file.parent.glob(f"{cases_file.name}-*"))
            for line in part.read_text(encoding="ascii").split() if line
        ]
    return result
