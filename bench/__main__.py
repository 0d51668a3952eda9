"""``python -m bench`` (``make bench``): measure SPEC §9's figures on a real local system, each against its
baseline from the same run; print a table and write ``bench/results.json``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import audit, e2e, intake, routing, stats
from bench.load import WrkSettings

RESULTS = Path(__file__).with_name("results.json")
PARTS = ("intake", "routing", "e2e", "audit")


def _load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def main(argv: list[str] | None = None) -> int:
    """Run every part (or the ones named), print the table, write the JSON; exit 1 if a bar is missed."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("parts", nargs="*", metavar="PART", help=f"only these of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the results (JSON)")
    parser.add_argument("--seconds", type=int, default=60, help="duration of the end-to-end run")
    parser.add_argument("--rate", type=float, default=500, help="applications per second in the end-to-end run")
    parser.add_argument("--wrk-seconds", type=int, default=15, help="duration of each wrk round")
    parser.add_argument("--routing-cases", type=int, default=10_000, help="pre-filled cases for routing")
    parser.add_argument("--verify-entries", type=int, default=1_000_000, help="chain length to verify")
    parser.add_argument("--service-python", default=sys.executable, metavar="PYTHON",
                        help="the interpreter the services (and intake's baseline) run with; make bench gives one "
                        "with the runtime dependencies only, as the container image has (default: this one)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="write py-spy samples (collapsed stacks) of intake and routing under load to DIR")
    args = parser.parse_args(argv)
    if unknown := set(args.parts) - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    parts = args.parts or list(PARTS)
    results: dict[str, Any] = {"rss_mb": {}}
    load: dict[str, list[float]] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ozg-bench-") as tmp:
        workdir = Path(tmp)
        for part in parts:
            print(f"[bench] {part} ... (load {_load()})", file=sys.stderr, flush=True)
            load[f"{part}_before"] = _load()
            rss: dict[str, float] = {}
            if part == "intake":
                results["intake"], rss = intake.run(workdir, WrkSettings(seconds=args.wrk_seconds),
                                                    profile=args.profile, python=args.service_python)
            elif part == "routing":
                results["routing"], rss = routing.run(workdir, args.routing_cases, profile=args.profile,
                                                      python=args.service_python)
            elif part == "e2e":
                results["e2e"], rss = e2e.run(workdir, rate=args.rate, seconds=args.seconds,
                                              python=args.service_python)
            else:
                results["audit"] = audit.run(workdir, verify_entries=args.verify_entries)
            load[f"{part}_after"] = _load()
            print(f"[bench] {part}: {json.dumps(results.get(part))} rss {rss}", file=sys.stderr, flush=True)
            for name, mb in rss.items():
                results["rss_mb"][name] = round(max(mb, results["rss_mb"].get(name, 0.0)), 1)
    results["meta"] = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "minutes": round((time.monotonic() - started) / 60, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()},
        "service_python": args.service_python,
        "load_average_1_5_15": load,
        "rss": "peak resident set size (VmHWM) of each service process over its phases",
        "verdicts": stats.verdicts(results),
    }
    missing = stats.missing_keys(results)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(stats.table(results))
    print(f"\nwritten to {args.out}; load average (1, 5, 15 min) per part: {load}")
    if missing:
        print(f"not measured: {', '.join(missing)}", file=sys.stderr)
    return 0 if not missing and all(results["meta"]["verdicts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
