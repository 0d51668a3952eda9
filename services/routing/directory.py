"""The municipality directory (Gemeindeverzeichnis) held in memory, with the indexes every lookup uses.

Keys follow Destatis: AGS = Land(2) RB(1) Kreis(2) Gemeinde(3); ARS = Kreis(5) Gemeindeverband(4) Gemeinde(3).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared.events import Region


@dataclass(frozen=True, slots=True)
class Land:
    """A Bundesland."""

    key: str
    name: str


@dataclass(frozen=True, slots=True)
class Kreis:
    """A Landkreis, Kreis or kreisfreie Stadt (5-digit key)."""

    key: str
    name: str
    type: str
    kreisfrei: bool


@dataclass(frozen=True, slots=True)
class Verband:
    """A Gemeindeverband (Verwaltungsgemeinschaft, Amt, Verbandsgemeinde, ...; 9-digit ARS)."""

    ars: str
    name: str
    type: str


@dataclass(frozen=True, slots=True)
class Gemeinde:
    """A Gemeinde with both keys."""

    ags: str
    ars: str
    name: str
    type: str

    @property
    def land_key(self) -> str:
        """The Land's 2-digit key."""
        return self.ars[:2]

    @property
    def kreis_key(self) -> str:
        """The Kreis's 5-digit key."""
        return self.ars[:5]

    @property
    def verband_ars(self) -> str:
        """The Gemeindeverband's 9-digit ARS."""
        return self.ars[:9]


class UnknownRegion(LookupError):
    """No Gemeinde has this key or postal code."""


class AmbiguousPostalCode(LookupError):
    """Several Gemeinden share the postal code and the place name doesn't decide."""

    def __init__(self, postal_code: str, candidates: list[Gemeinde]) -> None:
        super().__init__(f"postal code {postal_code} belongs to {len(candidates)} Gemeinden")
        self.postal_code = postal_code
        self.candidates = candidates


def _normalise(place: str) -> str:
    return " ".join(place.casefold().replace("-", " ").split())


@dataclass
class Directory:
    """All Länder, Kreise, Verbände and Gemeinden of one Gebietsstand, indexed for lookups."""

    gebietsstand: str
    laender: dict[str, Land] = field(default_factory=dict)
    kreise: dict[str, Kreis] = field(default_factory=dict)
    verbaende: dict[str, Verband] = field(default_factory=dict)
    by_ags: dict[str, Gemeinde] = field(default_factory=dict)
    by_ars: dict[str, Gemeinde] = field(default_factory=dict)
    # postal code -> [(normalised place name, Gemeinde)]
    by_postal_code: dict[str, list[tuple[str, Gemeinde]]] = field(default_factory=lambda: defaultdict(list))

    def add_gemeinde(self, gemeinde: Gemeinde) -> None:
        """Index a Gemeinde by both keys."""
        self.by_ags[gemeinde.ags] = gemeinde
        self.by_ars[gemeinde.ars] = gemeinde

    def add_postcode(self, postal_code: str, ags: str, place: str) -> None:
        """Index one row of the PLZ table; rows for unknown Gemeinden are ignored."""
        gemeinde = self.by_ags.get(ags)
        if gemeinde is not None:
            self.by_postal_code[postal_code].append((_normalise(place), gemeinde))

    def has_authority(self, ars: str) -> bool:
        """Whether ``ars`` names a Land (2 digits), Kreis (5), Gemeindeverband (9) or Gemeinde (12) of this
        directory."""
        indexes: dict[int, Mapping[str, object]] = {2: self.laender, 5: self.kreise, 9: self.verbaende,
                                                    12: self.by_ars}
        return ars in indexes.get(len(ars), {})

    def resolve(self, region: Region) -> Gemeinde:
        """The Gemeinde a region names; raises UnknownRegion or AmbiguousPostalCode."""
        if region.ars is not None:
            return self._get(self.by_ars, region.ars, "ARS")
        if region.ags is not None:
            return self._get(self.by_ags, region.ags, "AGS")
        assert region.postal_code is not None
        rows = self.by_postal_code.get(region.postal_code, [])
        candidates = list({g.ags: g for _, g in rows}.values())
        if not candidates:
            raise UnknownRegion(f"unknown postal code {region.postal_code}")
        if len(candidates) == 1:
            return candidates[0]
        if region.place:
            wanted = _normalise(region.place)
            named = list({g.ags: g for place, g in rows if place == wanted}.values())
            if len(named) == 1:
                return named[0]
        raise AmbiguousPostalCode(region.postal_code, candidates)

    @staticmethod
    def _get(index: dict[str, Gemeinde], key: str, kind: str) -> Gemeinde:
        try:
            return index[key]
        except KeyError:
            raise UnknownRegion(f"unknown {kind} {key}") from None

    @classmethod
    def from_json(cls, path: Path) -> Directory:
        """Load a directory file in the shape of the bundled demo (``data/demo_directory.json``)."""
        raw = json.loads(path.read_text(encoding="utf-8"))
        directory = cls(gebietsstand=raw["gebietsstand"])
        for item in raw["laender"]:
            directory.laender[item["key"]] = Land(item["key"], item["name"])
        for item in raw["kreise"]:
            directory.kreise[item["key"]] = Kreis(item["key"], item["name"], item["type"], item["kreisfrei"])
        for item in raw["verbaende"]:
            directory.verbaende[item["ars"]] = Verband(item["ars"], item["name"], item["type"])
        for item in raw["gemeinden"]:
            directory.add_gemeinde(Gemeinde(item["ags"], item["ars"], item["name"], item["type"]))
        for item in raw.get("postcodes", []):
            directory.add_postcode(item["plz"], item["ags"], item["place"])
        return directory
