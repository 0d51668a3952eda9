"""Importers of the official directory (GV100AD) and the PLZ table into routing's database.

Both are idempotent and all-or-nothing: the file is parsed and checked completely first (a malformed record is
reported with its line number and nothing is written); then one transaction replaces the stored data, and only when
the file's Gebietsstand is newer than the stored one. An older or equal Gebietsstand changes nothing and says so.
The import bumps the version row every routing replica polls, so they all load the new data within seconds.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, insert
from sqlmodel import Session, SQLModel, select

from services.routing import gv100ad
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

DIRECTORY = "directory"
POSTCODES = "postcodes"
DESTINATIONS = "destinations"

POSTCODE_COLUMNS = ["osm_id", "ags", "ort", "plz", "landkreis", "bundesland"]
_STAND_IN_NAME = re.compile(r"(?<!\d)(\d{4})-(\d{2})(?:-(\d{2}))?(?!\d)")
_CHUNK = 5000


@dataclass(frozen=True)
class ImportResult:
    """What an import did."""

    kind: str
    imported: bool
    stand: str
    previous_stand: str | None
    counts: dict[str, int] = field(default_factory=dict)

    def message(self) -> str:
        """One line for the operator."""
        what = "directory (GV100AD)" if self.kind == DIRECTORY else "PLZ table"
        if not self.imported:
            return (f"{what}: Gebietsstand {self.stand} is not newer than the stored {self.previous_stand}; "
                    "nothing changed")
        counts = ", ".join(f"{n} {kind}" for kind, n in self.counts.items())
        replaced = f" (replaced {self.previous_stand})" if self.previous_stand else ""
        return f"{what}: imported Gebietsstand {self.stand}{replaced}: {counts}"


class MalformedPostcodes(ValueError):
    """The PLZ table has malformed rows; ``errors`` holds (line number, what is wrong) for each."""

    def __init__(self, errors: list[tuple[int, str]]) -> None:
        shown = "; ".join(f"line {line}: {what}" for line, what in errors[:20])
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        super().__init__(f"{len(errors)} malformed row(s): {shown}{more}")
        self.errors = errors


def _version_for_update(session: Session, kind: str) -> DataVersion | None:
    # FOR UPDATE serialises concurrent imports on PostgreSQL; SQLite serialises writers anyway.
    return session.exec(select(DataVersion).where(DataVersion.kind == kind).with_for_update()).first()


def bump_version(session: Session, kind: str, **values: Any) -> None:
    """Raise the version of ``kind`` inside the caller's transaction (creating its row)."""
    row = _version_for_update(session, kind) or DataVersion(kind=kind, version=0)
    row.version += 1
    row.updated_at = datetime.now(UTC)
    for name, value in values.items():
        setattr(row, name, value)
    session.add(row)


def _insert(session: Session, model: type[SQLModel], rows: list[dict[str, object]]) -> None:
    for start in range(0, len(rows), _CHUNK):
        session.execute(insert(model), rows[start:start + _CHUNK])


def import_directory(engine: Engine, path: Path) -> ImportResult:
    """Import a GV100AD file; raises gv100ad.MalformedDirectory (nothing written) on a bad record."""
    data = path.read_bytes()
    parsed = gv100ad.parse_bytes(data)
    counts = parsed.counts()
    with Session(engine) as session, session.begin():
        current = _version_for_update(session, DIRECTORY)
        previous = current.stand if current is not None else None
        if previous is not None and previous >= parsed.gebietsstand:
            return ImportResult(DIRECTORY, False, parsed.gebietsstand, previous)
        for model in (DirGemeinde, DirVerband, DirKreis, DirRegion, DirRegierungsbezirk, DirLand):
            session.execute(delete(model))
        _insert(session, DirLand, parsed.laender)
        _insert(session, DirRegierungsbezirk, parsed.regierungsbezirke)
        _insert(session, DirRegion, parsed.regionen)
        _insert(session, DirKreis, parsed.kreise)
        _insert(session, DirVerband, parsed.verbaende)
        _insert(session, DirGemeinde, parsed.gemeinden)
        bump_version(session, DIRECTORY, stand=parsed.gebietsstand, sha256=hashlib.sha256(data).hexdigest(),
                     source=path.name[:300], records=sum(counts.values()))
    return ImportResult(DIRECTORY, True, parsed.gebietsstand, previous, counts)


def stand_from_name(path: Path) -> str | None:
    """A date in the file name (``..._2024-01.csv`` or ``..._2024-01-29.csv``) as YYYYMMDD."""
    match = _STAND_IN_NAME.search(path.name)
    if match is None:
        return None
    year, month, day = match.groups()
    return f"{year}{month}{day or '01'}"


def parse_postcodes(data: bytes) -> list[dict[str, object]]:
    """The rows of a PLZ table (columns ``osm_id,ags,ort,plz,landkreis,bundesland``), checked line by line."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MalformedPostcodes([(text_line(data, exc.start), "not UTF-8")]) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header != POSTCODE_COLUMNS:
        raise MalformedPostcodes([(1, f"the header must be {','.join(POSTCODE_COLUMNS)}")])
    rows: list[dict[str, object]] = []
    errors: list[tuple[int, str]] = []
    for row in reader:
        line = reader.line_num
        if not row:
            continue
        if len(row) != len(POSTCODE_COLUMNS):
            errors.append((line, f"{len(row)} columns instead of {len(POSTCODE_COLUMNS)}"))
            continue
        osm_id, ags, place, plz = row[0].strip(), row[1].strip(), row[2].strip(), row[3].strip()
        if not (len(ags) == 8 and ags.isascii() and ags.isdigit()):
            errors.append((line, f"ags must be 8 digits, got {ags!r}"))
        elif not (len(plz) == 5 and plz.isascii() and plz.isdigit()):
            errors.append((line, f"plz must be 5 digits, got {plz!r}"))
        elif not place or len(place) > 200:
            errors.append((line, "ort is empty or longer than 200 characters"))
        else:
            rows.append({"postal_code": plz, "ags": ags, "place": place, "osm_id": osm_id[:30] or None})
    if not rows and not errors:
        errors.append((1, "the file holds no rows"))
    if errors:
        raise MalformedPostcodes(errors)
    return rows


def text_line(data: bytes, offset: int) -> int:
    """The 1-based line number of byte ``offset`` in ``data``."""
    return data.count(b"\n", 0, offset) + 1


def import_postcodes(engine: Engine, path: Path, stand: str | None = None) -> ImportResult:
    """Import a PLZ table; ``stand`` (YYYYMMDD) defaults to the date in the file name."""
    stand = stand or stand_from_name(path)
    if stand is None or not (len(stand) == 8 and stand.isdigit()):
        raise ValueError("give the table's date with --stand YYYY-MM-DD (the file name holds none)")
    data = path.read_bytes()
    rows = parse_postcodes(data)
    with Session(engine) as session, session.begin():
        current = _version_for_update(session, POSTCODES)
        previous = current.stand if current is not None else None
        if previous is not None and previous >= stand:
            return ImportResult(POSTCODES, False, stand, previous)
        session.execute(delete(DirPostcode))
        _insert(session, DirPostcode, rows)
        bump_version(session, POSTCODES, stand=stand, sha256=hashlib.sha256(data).hexdigest(),
                     source=path.name[:300], records=len(rows))
    return ImportResult(POSTCODES, True, stand, previous, {"rows": len(rows)})
