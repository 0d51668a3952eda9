"""What routing holds in memory: the directory and the destinations, so no lookup queries the database."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from pathlib import Path

from services.routing.directory import Directory
from services.routing.models import Destination
from services.routing.store import RoutingStore
from shared.settings import KafkaSettings
from shared.topics import destination_topic_specs, ensure_topics


class RoutingState:
    """The in-memory indexes of one routing process."""

    def __init__(self, store: RoutingStore, directory: Directory) -> None:
        self.store = store
        self.directory = directory
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

    async def ensure_topic(self, kafka: KafkaSettings, destination_id: uuid.UUID) -> None:
        """Create a destination's topics on first use (the broker's auto-creation is never relied on)."""
        if destination_id not in self._topics:
            await ensure_topics(kafka, destination_topic_specs(destination_id))
            self._topics.add(destination_id)

    def seed_demo_destinations(self, path: Path) -> None:
        """Register the demo back offices of ``make run`` (idempotent) and reload the index."""
        raw = json.loads(path.read_text(encoding="utf-8"))
        for item in raw["destinations"]:
            self.store.upsert_destination(
                Destination(
                    destination_id=uuid.UUID(item["destination_id"]), name=item["name"],
                    authority_ars=item["authority_ars"], leika_keys=item["leika_keys"],
                )
            )
        self.reload_destinations()
