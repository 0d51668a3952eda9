"""Competence on the full official directory (GV100AD 30.11.2025 and the OSM PLZ table), by the bundled rules.

Each row is a real (service, place) pair; the place is given as AGS, ARS or postal code with place name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.routing.app import MIGRATIONS
from services.routing.competence import CompetenceRules
from services.routing.directory import AmbiguousPostalCode, Directory
from services.routing.importer import import_directory, import_postcodes
from services.routing.settings import RULES
from services.routing.store import RoutingStore
from shared import db
from shared.events import Region

WOHNGELD = "99107023037000"
FAHRERLAUBNIS = "99086004012000"
KFZ = "99036002012000"
AUFENTHALT = "99010003001000"
BAUANTRAG = "99012070006000"
WOHNSITZ = "99115005104000"
GEWERBE = "99050012104000"
GEBURT = "99027002012000"


@pytest.fixture(scope="module")
def official(handout_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Directory]:
    """The official directory, imported once for this module into a SQLite file, loaded as routing loads it."""
    engine = db.make_engine(f"sqlite:///{tmp_path_factory.mktemp('official') / 'routing.db'}")
    db.migrate(engine, MIGRATIONS, "routing")
    import_directory(engine, handout_data / "GV100AD_30112025.txt")
    import_postcodes(engine, handout_data / "zuordnung_plz_ort_osm_2024-01.csv")
    directory = RoutingStore(engine).load_directory()
    assert directory is not None
    yield directory
    engine.dispose()


RULES_ = CompetenceRules.load(RULES)

CASES = [
    # --- Bayern: kreisfreie Städte do all Landratsamt tasks
    (WOHNGELD, {"ags": "09162000"}, "09162", "kreis", "BY:kreisfreie-stadt"),  # München
    (BAUANTRAG, {"ags": "09162000"}, "09162", "kreis", "BY:kreisfreie-stadt"),
    (WOHNSITZ, {"ags": "09564000"}, "09564", "kreis", "BY:kreisfreie-stadt"),  # Nürnberg
    (AUFENTHALT, {"ars": "097610000000"}, "09761", "kreis", "BY:kreisfreie-stadt"),  # Augsburg
    # --- Bayern: Große Kreisstädte are untere Bauaufsichtsbehörden, nothing else
    (BAUANTRAG, {"ags": "09178124"}, "091780124124", "gemeinde", "BY:grosse-kreisstadt"),  # Freising
    (BAUANTRAG, {"postal_code": "85354"}, "091780124124", "gemeinde", "BY:grosse-kreisstadt"),
    (WOHNGELD, {"ags": "09178124"}, "09178", "kreis", "BY:landratsamt"),
    (WOHNSITZ, {"ags": "09178124"}, "091780124124", "gemeinde", "BY:gemeinde"),
    (BAUANTRAG, {"ags": "09174115"}, "091740115115", "gemeinde", "BY:grosse-kreisstadt"),  # Dachau
    (BAUANTRAG, {"ags": "09775135"}, "097750135135", "gemeinde", "BY:grosse-kreisstadt"),  # Neu-Ulm
    (FAHRERLAUBNIS, {"ags": "09775135"}, "09775", "kreis", "BY:landratsamt"),
    (KFZ, {"ags": "09779194"}, "09779", "kreis", "BY:landratsamt"),  # Nördlingen: Lkr. Donau-Ries
    # --- Bayern: a Stadt that is no Große Kreisstadt
    (BAUANTRAG, {"ags": "09273137"}, "09273", "kreis", "BY:landratsamt"),  # Kelheim
    (KFZ, {"postal_code": "93309", "place": "Kelheim"}, "09273", "kreis", "BY:landratsamt"),
    # --- Bayern: members of a Verwaltungsgemeinschaft (Art. 4 VGemO)
    (WOHNSITZ, {"ags": "09171114"}, "091715101", "verband", "BY:verwaltungsgemeinschaft"),  # Emmerting
    (GEBURT, {"ags": "09178142"}, "091785129", "verband", "BY:verwaltungsgemeinschaft"),  # Mauern
    (GEWERBE, {"ags": "09675139"}, "096755616", "verband", "BY:verwaltungsgemeinschaft"),  # Iphofen, St
    (WOHNGELD, {"ags": "09675139"}, "09675", "kreis", "BY:landratsamt"),
    (BAUANTRAG, {"ags": "09675139"}, "09675", "kreis", "BY:landratsamt"),
    # --- Bayern: postal codes shared by several Gemeinden, decided by the place name
    (GEWERBE, {"postal_code": "86695", "place": "Nordendorf"}, "097725706", "verband",
     "BY:verwaltungsgemeinschaft"),
    (WOHNSITZ, {"postal_code": "86695", "place": "Allmannshofen"}, "097725706", "verband",
     "BY:verwaltungsgemeinschaft"),
    (WOHNSITZ, {"postal_code": "83329", "place": "Kirchanschöring"}, "091890127127", "gemeinde", "BY:gemeinde"),
    (WOHNSITZ, {"postal_code": "83329", "place": "Waging am See"}, "091895173", "verband",
     "BY:verwaltungsgemeinschaft"),
    (WOHNGELD, {"postal_code": "97633", "place": "Trappstadt"}, "09673", "kreis", "BY:landratsamt"),
    # --- Hessen: Wohngeld with five Sonderstatusstädte, not Fulda and Gießen
    (WOHNGELD, {"ags": "06434001"}, "064340001001", "gemeinde", "HE:sonderstatusstadt"),  # Bad Homburg
    (WOHNGELD, {"postal_code": "63450"}, "064350014014", "gemeinde", "HE:sonderstatusstadt"),  # Hanau
    (WOHNGELD, {"ags": "06534014"}, "065340014014", "gemeinde", "HE:sonderstatusstadt"),  # Marburg
    (WOHNGELD, {"ags": "06433012"}, "064330012012", "gemeinde", "HE:sonderstatusstadt"),  # Rüsselsheim
    (WOHNGELD, {"ags": "06532023"}, "065320023023", "gemeinde", "HE:sonderstatusstadt"),  # Wetzlar
    (WOHNGELD, {"ags": "06631009"}, "06631", "kreis", "HE:landkreis"),  # Fulda
    (WOHNGELD, {"ags": "06531005"}, "06531", "kreis", "HE:landkreis"),  # Gießen
    (WOHNGELD, {"ags": "06412000"}, "06412", "kreis", "HE:kreisfreie-stadt"),  # Frankfurt am Main
    # --- Hessen: building permits with all seven Sonderstatusstädte
    (BAUANTRAG, {"ags": "06631009"}, "066310009009", "gemeinde", "HE:sonderstatusstadt"),  # Fulda
    (BAUANTRAG, {"postal_code": "35390"}, "065310005005", "gemeinde", "HE:sonderstatusstadt"),  # Gießen
    (BAUANTRAG, {"ags": "06435014"}, "064350014014", "gemeinde", "HE:sonderstatusstadt"),  # Hanau
    (BAUANTRAG, {"ags": "06531007"}, "06531", "kreis", "HE:landkreis"),  # Heuchelheim
    (BAUANTRAG, {"ags": "06611000"}, "06611", "kreis", "HE:kreisfreie-stadt"),  # Kassel
    # --- Hessen: driving licences only with Landkreis / kreisfreie Stadt
    (FAHRERLAUBNIS, {"ags": "06434001"}, "06434", "kreis", "HE:landkreis"),
    (FAHRERLAUBNIS, {"ags": "06414000"}, "06414", "kreis", "HE:kreisfreie-stadt"),  # Wiesbaden
    # --- Hessen: services without a Hessian rule fall back to the default
    (KFZ, {"ags": "06532023"}, "06532", "kreis", "default:kreis"),
    (WOHNSITZ, {"postal_code": "65510", "place": "Idstein"}, "064390008008", "gemeinde", "default:gemeinde"),
    (WOHNSITZ, {"postal_code": "65510", "place": "Hünstetten"}, "064390007007", "gemeinde", "default:gemeinde"),
    (WOHNSITZ, {"ags": "06414000"}, "06414", "kreis", "default:kreisfreie-stadt"),
    # --- Nordrhein-Westfalen: the default
    (WOHNGELD, {"ags": "05315000"}, "05315", "kreis", "default:kreisfreie-stadt"),  # Köln
    (WOHNSITZ, {"ags": "05378004"}, "053780004004", "gemeinde", "default:gemeinde"),  # Bergisch Gladbach
    (BAUANTRAG, {"ags": "05378004"}, "05378", "kreis", "default:kreis"),
    (KFZ, {"ags": "05334002"}, "05334", "kreis", "default:kreis"),  # Aachen: Städteregion Aachen
    # --- Schleswig-Holstein: the default, also for members of an Amt
    (WOHNSITZ, {"ags": "01002000"}, "01002", "kreis", "default:kreisfreie-stadt"),  # Kiel
    (GEWERBE, {"postal_code": "24321", "place": "Lütjenburg"}, "010575727048", "gemeinde", "default:gemeinde"),
    (WOHNGELD, {"postal_code": "24635", "place": "Rickling"}, "01060", "kreis", "default:kreis"),
    # --- Sachsen, Berlin, Hamburg: the default
    (WOHNSITZ, {"ags": "14628270"}, "146285229270", "gemeinde", "default:gemeinde"),  # Pirna (in a VG)
    (WOHNGELD, {"ags": "14612000"}, "14612", "kreis", "default:kreisfreie-stadt"),  # Dresden
    (WOHNSITZ, {"ags": "11000000"}, "11000", "kreis", "default:kreisfreie-stadt"),  # Berlin
    (KFZ, {"ags": "02000000"}, "02000", "kreis", "default:kreisfreie-stadt"),  # Hamburg
]


@pytest.mark.parametrize(("leika_key", "region", "authority_ars", "level", "rule"), CASES)
def test_competence_on_the_official_directory(
    official: Directory, leika_key: str, region: dict[str, str], authority_ars: str, level: str, rule: str
) -> None:
    gemeinde = official.resolve(Region.model_validate(region))
    decision = RULES_.decide(official, gemeinde, leika_key)
    assert (decision.authority.ars, decision.authority.level.value, decision.rule) == (authority_ars, level, rule)


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 40
    assert {case[2][:2] for case in CASES} >= {"09", "06", "05", "01"}


@pytest.mark.parametrize(("postal_code", "expected"), [("86695", 2), ("97633", 8)])
def test_a_shared_postal_code_without_a_deciding_place_is_ambiguous(
    official: Directory, postal_code: str, expected: int
) -> None:
    with pytest.raises(AmbiguousPostalCode) as ambiguous:
        official.resolve(Region(postal_code=postal_code))
    assert len(ambiguous.value.candidates) == expected
    with pytest.raises(AmbiguousPostalCode):
        official.resolve(Region(postal_code=postal_code, place="Nirgendwo"))
