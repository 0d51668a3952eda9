"""The service's own verification of the chain (periodic, and on ``GET /v1/verify``), and its verdict as metrics.

``ozg_audit_chain_intact`` and ``ozg_audit_last_verified_timestamp_seconds`` have no sample until a verification
finished: a labelless ``Gauge`` would export 0 from the start, and the critical alert on ``== 0`` would fire at every
start of the service.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from services.audit.models import VerifyReport
from services.audit.store import Anchor, AuditStore

log = logging.getLogger(__name__)

INTACT = "ozg_audit_chain_intact"
LAST_VERIFIED = "ozg_audit_last_verified_timestamp_seconds"


class ChainMonitor:
    """Verifies the chain for the service and exports the verdict of the latest verification started.

    A collector of its own rather than a ``Gauge``: before the first verification both metrics have no sample.
    """

    def __init__(
        self, store: AuditStore, public_keys: Sequence[Ed25519PublicKey], registry: CollectorRegistry | None = None,
        *, retired: Mapping[str, int] | None = None, clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.public_keys = public_keys
        self.retired = retired or {}
        self.clock = clock
        self._lock = threading.Lock()
        # (started, finished, intact) of the verification whose verdict is exported, or None.
        self._verdict: tuple[float, float, bool] | None = None
        if registry is not None:
            registry.register(self)

    def verify(self, anchors: Sequence[Anchor] = (), *, trigger: str = "api") -> VerifyReport:
        """Verify the whole chain (in the calling thread: call it through a worker thread), export and log the
        verdict; ``trigger`` says who asked (``api`` or ``schedule``), for the log."""
        started = self.clock()
        report = self.store.verify(self.public_keys, anchors=anchors, retired=self.retired)
        finished = self.clock()
        with self._lock:
            # Two verifications may overlap (the schedule and an auditor): the one started later saw more.
            if self._verdict is None or started >= self._verdict[0]:
                self._verdict = (started, finished, report.intact)
        # Sequence numbers, counts and the kind only: the chain holds no personal data, its log neither.
        facts = {"trigger": trigger, "length": report.length, "checkpoints": report.checkpoints,
                 "anchors": report.anchors, "duration_s": round(finished - started, 3)}
        if report.intact:
            log.info("audit chain verified intact", extra=facts)
        else:
            log.error("audit chain broken", extra={**facts, "kind": report.kind, "first_bad_seq": report.first_bad_seq,
                                                   "checkpoint_seq": report.checkpoint_seq})
        return report

    def describe(self) -> list[GaugeMetricFamily]:
        return list(self._families(None))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        return self._families(self._verdict)

    @staticmethod
    def _families(verdict: tuple[float, float, bool] | None) -> Iterator[GaugeMetricFamily]:
        intact = GaugeMetricFamily(INTACT, "1 if the last verification found the chain intact, else 0; no sample "
                                           "before the first verification")
        verified = GaugeMetricFamily(LAST_VERIFIED, "When the last verification finished (Unix time); no sample "
                                                    "before the first verification")
        if verdict is not None:
            _, finished, ok = verdict
            intact.add_metric([], 1 if ok else 0)
            verified.add_metric([], finished)
        yield intact
        yield verified
