"""What routing holds in memory: the directory, the competence rules and the destinations, so no lookup queries
the database. Every replica polls the database's version rows (and the rules files) and reloads what changed."""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from pathlib import Path

from services.routing.competence import CompetenceRules, InvalidRules, rules_fingerprint
from services.routing.directory import Directory
from services.routing.importer import DESTINATIONS, DIRECTORY, POSTCODES
from services.routing.models import Destination
from services.routing.store import RoutingStore
from shared.settings import KafkaSettings
from shared.topics import destination_topic_specs, ensure_topics

log = logging.getLogger(__name__)


class RoutingState:
    """The in-memory indexes of one routing process."""

    def __init__(self, store: RoutingStore, directory: Directory, rules: CompetenceRules | None = None,
                 *, fallback_directory: Path | None = None, rules_dir: Path | None = None) -> None:
        self.store = store
        self.directory = directory
        self.fallback_directory = fallback_directory
        self.rules_dir = rules_dir
        if rules is None:
            if rules_dir is None:
                raise ValueError("give the rules or the directory they are read from")
            rules = CompetenceRules.load(rules_dir)
        self.rules = rules
        self._versions: dict[str, int] | None = None  # None: nothing loaded yet
        self._by_authority: dict[str, list[Destination]] = {}
        self._topics: set[uuid.UUID] = set()

    def destinations_for(self, authority_ars: str, leika_key: str) -> list[Destination]:
        """The destinations of an authority serving ``leika_key``, oldest registration first."""
        return [d for d in self._by_authority.get(authority_ars, []) if not d.leika_keys or leika_key in d.leika_keys]

    def reload_destinations(self) -> None:
        """Rebuild the destination index from the database."""
        index: dict[str, list[Destination]] = defaultdict(list)
        for destination in sorted(self.store.destinations(), key=lambda d: d.created_at):
            index[destination.authority_ars].append(destination)
        self._by_authority = dict(index)

    def reload_directory(self) -> None:
        """Load the imported directory, or the fallback file while the database holds none."""
        directory = self.store.load_directory()
        if directory is None and self.fallback_directory is not None:
            directory = Directory.from_json(self.fallback_directory)
        if directory is not None:
            self.directory = directory
            log.info("directory loaded", extra={"gebietsstand": directory.gebietsstand,
                                                "gemeinden": len(directory.by_ags),
                                                "postal_codes": len(directory.by_postal_code)})

    def refresh(self) -> None:
        """Reload what changed since the last call (version rows, rules files); cheap when nothing did."""
        versions = self.store.versions()
        if self._versions is None or self._versions != versions:
            old = self._versions or {}
            changed = {kind for kind in set(versions) | set(old) if versions.get(kind) != old.get(kind)}
            if self._versions is None or changed & {DIRECTORY, POSTCODES}:
                self.reload_directory()
            if self._versions is None or DESTINATIONS in changed:
                self.reload_destinations()
            self._versions = versions
        if self.rules_dir is not None and self.rules.changed(self.rules_dir):
            try:
                self.rules = CompetenceRules.load(self.rules_dir)
                log.info("competence rules reloaded", extra={"rules_dir": str(self.rules_dir)})
            except InvalidRules as exc:
                # Keep deciding with the rules that were valid; the operator sees the error in the log.
                log.error("competence rules not reloaded", extra={"error": str(exc)})
                # Report it once, not on every poll: again only when the files change again.
                self.rules.fingerprint = rules_fingerprint(self.rules_dir)

    async def ensure_topic(self, kafka: KafkaSettings, destination_id: uuid.UUID) -> None:
        """Create a destination's topics on first use (the broker's auto-creation is never relied on)."""
        if destination_id not in self._topics:
            await ensure_topics(kafka, destination_topic_specs(destination_id, kafka))
            self._topics.add(destination_id)

    async def ensure_all_topics(self, kafka: KafkaSettings) -> None:
        """Create the topics of every registered destination that lacks them, in one request.

        Run once connected: destinations seeded at start (the demo's) or registered while the broker lost its state
        have them before their first case, so audit's pattern subscription does not rebalance in the middle of the
        first cases.
        """
        missing = {d.destination_id for ds in self._by_authority.values() for d in ds} - self._topics
        if missing:
            await ensure_topics(kafka, [spec for d in sorted(missing) for spec in destination_topic_specs(d, kafka)])
            self._topics |= missing

    def forget_topics(self) -> None:
        """After a broker outage: a broker that lost its state comes back without the destinations' topics."""
        self._topics.clear()

    def seed_demo_destinations(self, path: Path) -> None:
        """Register the demo back offices of ``make run`` (idempotent) and reload the index."""
        raw = json.loads(path.read_text(encoding="utf-8"))
        existing = {d.destination_id: d for d in self.store.destinations()}
        for item in raw["destinations"]:
            destination = Destination(
                destination_id=uuid.UUID(item["destination_id"]), name=item["name"],
                authority_ars=item["authority_ars"], leika_keys=item["leika_keys"],
            )
            old = existing.get(destination.destination_id)
            if old is None or (old.name, old.authority_ars, old.leika_keys) != (
                    destination.name, destination.authority_ars, destination.leika_keys):
                self.store.upsert_destination(destination)
        self.reload_destinations()

