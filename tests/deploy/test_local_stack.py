"""The local stack runs its services with the interpreter it is given (``make bench`` gives one with the runtime
dependencies only, as the container image has)."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from deploy.local.stack import LocalStack


def test_services_run_with_the_given_interpreter(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(calls))}\nexec {shlex.quote(sys.executable)} "$@"\n',
                       encoding="utf-8")
    wrapper.chmod(0o755)
    stack = LocalStack.on_free_ports(tmp_path / "stack", python=str(wrapper))
    (stack.root / "logs").mkdir(parents=True)
    try:
        stack.start_service("audit")
        deadline = time.monotonic() + 10
        while not calls.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert calls.read_text(encoding="utf-8").split() == ["-m", "services.audit"]
        # The wrapper hands over to the real interpreter (exec): the process becomes the service itself.
        expected = [sys.executable.encode(), b"-m", b"services.audit"]
        proc = Path(f"/proc/{stack.processes['audit'].pid}/cmdline")
        while proc.read_bytes().split(b"\0")[:3] != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.read_bytes().split(b"\0")[:3] == expected
    finally:
        stack.stop()
