"""The GV100AD and PLZ importers on the real files from the handout data folder (SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, select

from services.routing import __main__ as cli
from services.routing.app import MIGRATIONS
from services.routing.gv100ad import MalformedDirectory
from services.routing.importer import (
    DIRECTORY,
    POSTCODES,
    MalformedPostcodes,
    import_directory,
    import_postcodes,
)
from services.routing.models import (
    DataVersion,
    DirGemeinde,
    DirKreis,
    DirLand,
    DirPostcode,
    DirRegierungsbezirk,
    DirRegion,
    DirVerband,
)
from services.routing.store import RoutingStore
from shared import db
from shared.events import Region

GV100AD = "GV100AD_30112025.txt"
PLZ = "zuordnung_plz_ort_osm_2024-01.csv"


def engine_for(url: str) -> Engine:
    engine = db.make_engine(url)
    db.migrate(engine, MIGRATIONS, "routing")
    return engine


def count(engine: Engine, model: type) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(model)).one())


def version(engine: Engine, kind: str) -> DataVersion | None:
    with Session(engine) as session:
        return session.get(DataVersion, kind)


def csv_rows(handout_data: Path, name: str) -> list[dict[str, str]]:
    with (handout_data / name).open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def with_stand(source: Path, target: Path, stand: str, *, drop_ags: set[str] = frozenset(),  # type: ignore[assignment]
               break_line: int | None = None) -> Path:
    """A copy of the GV100AD file with another Gebietsstand, some Gemeinden dropped or one line broken."""
    lines = source.read_bytes().decode("utf-8").split("\r\n")
    out = []
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        if line.startswith("60") and line[10:18] in drop_ags:
            continue
        line = line[:2] + stand + line[10:]
        if number == break_line:
            line = line[:150]
        out.append(line)
    target.write_bytes(("\r\n".join(out) + "\r\n").encode("utf-8"))
    return target


def test_imports_the_official_directory(handout_data: Path, tmp_path: Path) -> None:
    engine = engine_for(f"sqlite:///{tmp_path / 'routing.db'}")
    result = import_directory(engine, handout_data / GV100AD)
    assert result.imported
    assert result.stand == "20251130"
    assert (count(engine, DirLand), count(engine, DirRegierungsbezirk), count(engine, DirRegion)) == (16, 29, 12)
    assert (count(engine, DirKreis), count(engine, DirVerband), count(engine, DirGemeinde)) == (400, 4590, 10953)
    stored = version(engine, DIRECTORY)
    assert stored is not None
    assert stored.stand == "20251130"
    assert stored.version == 1

    with Session(engine) as session:
        gemeinden = {g.ags: g for g in session.exec(select(DirGemeinde)).all()}
        kreise = {k.key: k for k in session.exec(select(DirKreis)).all()}
        verbaende = {v.ars: v for v in session.exec(select(DirVerband)).all()}
    # Every 97th Gemeinde, and every Kreis and Verband, against the CSVs derived from the same file.
    for row in csv_rows(handout_data, "gv100ad_gemeinden.csv")[::97]:
        g = gemeinden[row["ags"]]
        assert (g.ars, g.name, g.type_code, g.type) == (
            row["ars"], row["gemeinde_name"], row["gemeinde_typ_code"], row["gemeinde_typ"])
        assert (g.postal_code or "", g.postal_code_unique) == (
            row["plz_verwaltungssitz"], row["plz_eindeutig"] == "true")
        assert g.population == (int(row["bevoelkerung"]) if row["bevoelkerung"] else None)
    for row in csv_rows(handout_data, "gv100ad_kreise.csv"):
        k = kreise[row["kreis_key"]]
        assert (k.name, k.type_code, k.type, k.kreisfrei, k.seat) == (
            row["kreis_name"], row["kreis_typ_code"], row["kreis_typ"], row["kreisfrei"] == "true",
            row["sitz_kreisverwaltung"])
    for row in csv_rows(handout_data, "gv100ad_gemeindeverbaende.csv"):
        v = verbaende[row["verband_ars9"]]
        assert (v.name, v.type_code, v.type) == (row["verband_name"], row["verband_typ_code"], row["verband_typ"])
    assert gemeinden["09184139"].ars == "091840139139"  # Pullach i.Isartal (SOURCES.md spot check)
    assert gemeinden["09178124"].type == "Große Kreisstadt"  # Freising

    again = import_directory(engine, handout_data / GV100AD)
    assert not again.imported
    assert "not newer" in again.message()
    assert version(engine, DIRECTORY).version == 1  # type: ignore[union-attr]
    assert count(engine, DirGemeinde) == 10953


def test_a_newer_gebietsstand_replaces_an_older_one_and_a_malformed_file_changes_nothing(
    handout_data: Path, tmp_path: Path, database_url: str
) -> None:
    engine = engine_for(database_url)
    assert import_directory(engine, handout_data / GV100AD).imported

    broken = with_stand(handout_data / GV100AD, tmp_path / "GV100AD_01012026.txt", "20260101", break_line=5000)
    with pytest.raises(MalformedDirectory) as malformed:
        import_directory(engine, broken)
    assert malformed.value.errors[0][0] == 5000
    assert "line 5000" in str(malformed.value)
    assert version(engine, DIRECTORY).stand == "20251130"  # type: ignore[union-attr]
    assert count(engine, DirGemeinde) == 10953

    newer = with_stand(handout_data / GV100AD, tmp_path / "GV100AD_01012026.txt", "20260101",
                       drop_ags={"09184139"})
    result = import_directory(engine, newer)
    assert result.imported
    assert result.previous_stand == "20251130"
    assert version(engine, DIRECTORY).stand == "20260101"  # type: ignore[union-attr]
    assert count(engine, DirGemeinde) == 10952

    older = with_stand(handout_data / GV100AD, tmp_path / "GV100AD_01012025.txt", "20250101")
    assert not import_directory(engine, older).imported
    assert count(engine, DirGemeinde) == 10952

    # The directory routing holds in memory comes from the database.
    directory = RoutingStore(engine).load_directory()
    assert directory is not None
    assert directory.gebietsstand == "2026-01-01"
    assert len(directory.by_ags) == 10952
    engine.dispose()


def test_imports_the_postcode_table(handout_data: Path, tmp_path: Path, database_url: str) -> None:
    engine = engine_for(database_url)
    result = import_postcodes(engine, handout_data / PLZ)
    assert result.imported
    assert result.stand == "20240101"
    assert count(engine, DirPostcode) == 12854
    assert not import_postcodes(engine, handout_data / PLZ).imported

    bad = tmp_path / "plz_2025-01.csv"
    lines = (handout_data / PLZ).read_text(encoding="utf-8").splitlines()
    lines[41] = lines[41].replace(",", ";")
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(MalformedPostcodes) as malformed:
        import_postcodes(engine, bad)
    assert malformed.value.errors[0][0] == 42
    assert version(engine, POSTCODES).stand == "20240101"  # type: ignore[union-attr]

    assert import_directory(engine, handout_data / GV100AD).imported
    directory = RoutingStore(engine).load_directory()
    assert directory is not None
    assert directory.resolve(Region(postal_code="93309")).name == "Kelheim, St"
    engine.dispose()


def test_the_command_line(handout_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ROUTING_DATABASE_URL", f"sqlite:///{tmp_path / 'routing.db'}")
    assert cli.import_directory([str(handout_data / GV100AD)]) == 0
    assert "10953 gemeinden" in capsys.readouterr().out
    assert cli.import_directory([str(handout_data / GV100AD)]) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert cli.import_postcodes([str(handout_data / PLZ)]) == 0
    assert "12854 rows" in capsys.readouterr().out
    broken = tmp_path / "GV100AD_bad.txt"
    broken.write_bytes((handout_data / GV100AD).read_bytes()[:220 * 3 + 6 + 100])
    assert cli.import_directory([str(broken)]) == 1
    assert "line 4" in capsys.readouterr().err
