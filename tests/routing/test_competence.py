"""Competence and dispatch decisions on the demo directory (pure, no broker)."""

from __future__ import annotations

import pytest

from services.routing.competence import CompetenceRules, competent_authority
from services.routing.directory import AmbiguousPostalCode, Directory, UnknownRegion
from services.routing.settings import DATA, RULES
from shared.events import Region

DIRECTORY = Directory.from_json(DATA / "demo_directory.json")
RULES_ = CompetenceRules.load(RULES)
WOHNSITZ, WOHNGELD, GEWERBE = "99115005104000", "99107023037000", "99050012104000"


@pytest.mark.parametrize(
    ("leika_key", "ags", "authority_ars", "level", "rule"),
    [
        (WOHNSITZ, "09273137", "092730137137", "gemeinde", "BY:gemeinde"),  # Stadt Kelheim
        (WOHNGELD, "09273137", "09273", "kreis", "BY:landratsamt"),  # Landratsamt Kelheim
        (WOHNSITZ, "09273113", "092735219", "verband", "BY:verwaltungsgemeinschaft"),  # Aiglsbach: VG Mainburg
        (GEWERBE, "09375114", "093755335", "verband", "BY:verwaltungsgemeinschaft"),  # Altenthann: VG Donaustauf
        (WOHNSITZ, "09761000", "09761", "kreis", "BY:kreisfreie-stadt"),  # Augsburg
        (WOHNGELD, "06414000", "06414", "kreis", "HE:kreisfreie-stadt"),  # Wiesbaden
        (GEWERBE, "06436005", "064360005005", "gemeinde", "default:gemeinde"),  # Hattersheim
        (WOHNGELD, "06531007", "06531", "kreis", "HE:landkreis"),  # Heuchelheim: Landkreis Gießen
    ],
)
def test_competent_authority(leika_key: str, ags: str, authority_ars: str, level: str, rule: str) -> None:
    gemeinde = DIRECTORY.resolve(Region(ags=ags))
    decision = competent_authority(RULES_, DIRECTORY, gemeinde, leika_key)
    assert (decision.authority.ars, decision.authority.level.value, decision.rule) == (authority_ars, level, rule)


def test_region_forms_resolve_to_the_same_gemeinde() -> None:
    by_ags = DIRECTORY.resolve(Region(ags="09772177"))
    assert by_ags.name == "Meitingen, M"
    assert DIRECTORY.resolve(Region(ars="097720177177")) == by_ags
    assert DIRECTORY.resolve(Region(postal_code="86405")) == by_ags


def test_unknown_region() -> None:
    with pytest.raises(UnknownRegion):
        DIRECTORY.resolve(Region(ags="01001000"))
    with pytest.raises(UnknownRegion):
        DIRECTORY.resolve(Region(postal_code="10115"))


def test_shared_postal_code_needs_the_place() -> None:
    shared = [plz for plz, rows in DIRECTORY.by_postal_code.items() if len({g.ags for _, g in rows}) > 1]
    assert shared, "the demo directory should contain a postal code shared by two Gemeinden"
    plz = shared[0]
    with pytest.raises(AmbiguousPostalCode) as ambiguous:
        DIRECTORY.resolve(Region(postal_code=plz))
    assert len(ambiguous.value.candidates) > 1
    place, gemeinde = DIRECTORY.by_postal_code[plz][0]
    assert DIRECTORY.resolve(Region(postal_code=plz, place=place.title())) == gemeinde
