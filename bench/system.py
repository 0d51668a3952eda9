"""The real parts the benchmark runs against: the local stack's processes, API keys, peak memory."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from deploy.local.__main__ import first_application
from deploy.local.broker import free_port, wait_for_port
from deploy.local.stack import LocalStack
from shared import clients
from shared.events import ClientKind

# Every service answers at once; intake's per-client rate limit would otherwise be what is measured.
BENCH_ENV = {"INTAKE_RATE_LIMIT": "1000000/second"}


def peak_rss_mb(pid: int) -> float:
    """The peak resident set size of a live process so far (``VmHWM`` of /proc), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def service_rss(stack: LocalStack) -> dict[str, float]:
    """The peak RSS of each running service process of ``stack``, in MiB."""
    return {name: peak_rss_mb(process.pid) for name, process in stack.processes.items() if process.poll() is None}


@contextmanager
def running(root: Path, services: Sequence[str], python: str = sys.executable) -> Iterator[LocalStack]:
    """A local stack on free ports under ``root`` with ``services`` started and ready, each run by ``python``;
    stopped afterwards."""
    stack = LocalStack.on_free_ports(root, env=BENCH_ENV, python=python)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    (root / "letters").mkdir(parents=True, exist_ok=True)
    try:
        if set(services) == {"intake", "routing", "notify", "audit"}:
            stack.start()
        else:
            stack.start_broker()
            for name in services:
                stack.start_service(name)
            stack.wait_ready(services=tuple(services))
        yield stack
    finally:
        stack.stop()


def portal_key(stack: LocalStack, timeout_s: float = 30) -> str:
    """Issue a portal key and wait until intake accepts it."""
    _, key = asyncio.run(clients.issue(stack.kafka, kind=ClientKind.PORTAL, name="Benchmark portal"))
    probe = urllib.request.Request(f"{stack.url('intake')}/v1/applications/{uuid.uuid4()}",  # noqa: S310
                                   headers={"Authorization": f"Bearer {key}"})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(probe, timeout=5)  # noqa: S310
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # known key, unknown case
                return key
            if time.monotonic() > deadline:
                raise TimeoutError(f"intake does not accept the benchmark key ({exc.code})") from None
        time.sleep(0.2)


def application_body(path: Path) -> Path:
    """Write the demo application (Wohnsitz anmelden in Kelheim, routed to a demo back office) to ``path``."""
    path.write_text(json.dumps(first_application(), ensure_ascii=False), encoding="utf-8")
    return path


@contextmanager
def bare_intake(python: str = sys.executable) -> Iterator[str]:
    """The baseline app (bench/bare_intake.py) under uvicorn, as intake runs (no access log, the same
    ``python``); yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [python, "-m", "uvicorn", "bench.bare_intake:app", "--host", "127.0.0.1", "--port", str(port),
         "--no-access-log", "--log-level", "warning"],
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=15)


@contextmanager
def profiled(pid: int, out: Path | None, seconds: int) -> Iterator[None]:
    """Sample process ``pid`` with py-spy for ``seconds`` into ``out`` while the body runs: a flame graph (SVG),
    or collapsed stacks for text tools where ``out`` ends in ``.txt``; without ``out``, just run the body."""
    if out is None:
        yield
        return
    binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(
        [binary, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "100", "--nonblocking",
         "--format", "raw" if out.suffix == ".txt" else "flamegraph", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        spy.wait(timeout=seconds + 60)
