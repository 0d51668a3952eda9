"""A local SMTP sink: every message received is written as one ``.eml`` file."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class EmlWriter:
    """aiosmtpd handler writing each message to ``<directory>/<time>-<id>.eml``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        content = envelope.original_content or envelope.content
        data = content if isinstance(content, bytes) else str(content).encode()
        path = self.directory / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.eml"
        path.write_bytes(data)
        return "250 Message accepted for delivery"


def start_sink(directory: Path, port: int, host: str = "127.0.0.1") -> Controller:
    """Start the sink in a background thread; call ``.stop()`` on the result to end it."""
    controller = Controller(EmlWriter(directory), hostname=host, port=port)
    controller.start()
    return controller
