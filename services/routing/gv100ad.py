"""Parser of the official Destatis Gemeindeverzeichnis GV100AD (fixed-width, 220 characters per record).

Positions are characters, 1-based as Destatis documents them (UTF-8, CRLF; LF alone is accepted too):

| positions | field | record types |
|---|---|---|
| 1-2 | Satzart: 10 Land, 20 Regierungsbezirk, 30 Region (BW), 40 Kreis, 50 Gemeindeverband, 60 Gemeinde | all |
| 3-10 | Gebietsstand (YYYYMMDD) | all |
| 11-12 Land, 13 RB, 14-15 Kreis, 16-18 Gemeinde | keys (Region: 11-14) | all |
| 19-22 | Gemeindeverband | 50, 60 |
| 23-72 | Name | all |
| 73-122 | Sitz der Verwaltung | 10, 20, 30, 40, 50 |
| 123-124 | Textkennzeichen (type code) | 40, 50, 60 |
| 129-139 / 140-150 | Fläche in ha / Bevölkerung | 60 |
| 166-170 / 171-175 | PLZ des Verwaltungssitzes / ``*****`` when the Gemeinde has more than one PLZ | 60 |

The ARS of a Gemeinde is positions 11-15 + 19-22 + 16-18; of a Gemeindeverband 11-15 + 19-22.
Nothing is half-parsed: any malformed record makes :func:`parse` raise :class:`MalformedDirectory` listing every
bad line by number.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

RECORD_LENGTH = 220

KREIS_TYPES = {
    "41": "Kreisfreie Stadt",
    "42": "Stadtkreis",
    "43": "Kreis",
    "44": "Landkreis",
    "45": "Regionalverband",
}
# Kreise of these types are kreisfrei: they do the Kreis's and the Gemeinde's tasks (Berlin and Hamburg too).
KREISFREI_TYPES = frozenset({"41", "42"})
VERBAND_TYPES = {
    "50": "verbandsfreie Gemeinde",
    "51": "Amt",
    "52": "Samtgemeinde",
    "53": "Verbandsgemeinde",
    "54": "Verwaltungsgemeinschaft",
    "55": "Kirchspielslandgemeinde",
    "56": "Verwaltungsverband",
    "58": "Erfüllende Gemeinde",
}
GEMEINDE_TYPES = {
    "60": "Markt",
    "61": "Kreisfreie Stadt",
    "62": "Stadtkreis",
    "63": "Stadt",
    "64": "Kreisangehörige Gemeinde",
    "65": "gemeindefreies Gebiet, bewohnt",
    "66": "gemeindefreies Gebiet, unbewohnt",
    "67": "Große Kreisstadt",
}
# Satzart-20 units whose name says they are statistical only (Niedersachsen) or abolished (RP, Sachsen).
_INACTIVE_RB_PREFIXES = ("Statistische Region", "früher:")


@dataclass
class ParsedDirectory:
    """Every unit of one GV100AD file, as rows ready for the database."""

    gebietsstand: str  # YYYYMMDD
    laender: list[dict[str, object]] = field(default_factory=list)
    regierungsbezirke: list[dict[str, object]] = field(default_factory=list)
    regionen: list[dict[str, object]] = field(default_factory=list)
    kreise: list[dict[str, object]] = field(default_factory=list)
    verbaende: list[dict[str, object]] = field(default_factory=list)
    gemeinden: list[dict[str, object]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many units of each kind the file holds."""
        return {
            "laender": len(self.laender),
            "regierungsbezirke": len(self.regierungsbezirke),
            "regionen": len(self.regionen),
            "kreise": len(self.kreise),
            "verbaende": len(self.verbaende),
            "gemeinden": len(self.gemeinden),
        }


class MalformedDirectory(ValueError):
    """The file has malformed records; ``errors`` holds (line number, what is wrong) for each."""

    def __init__(self, errors: list[tuple[int, str]]) -> None:
        shown = "; ".join(f"line {line}: {what}" for line, what in errors[:20])
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        super().__init__(f"{len(errors)} malformed record(s): {shown}{more}")
        self.errors = errors


class _Bad(ValueError):
    pass


def _digits(value: str, what: str, *, blank_ok: bool = False) -> str:
    if blank_ok and not value.strip():
        return ""
    if not value.isascii() or not value.isdigit():
        raise _Bad(f"{what} must be {len(value)} digits, got {value!r}")
    return value


def _number(value: str, what: str) -> int | None:
    text = value.strip()
    if not text:
        return None
    return int(_digits(text, what))


def _text(value: str) -> str:
    return value.strip()


def _name(record: str) -> str:
    name = _text(record[22:72])
    if not name:
        raise _Bad("the name (positions 23-72) is empty")
    return name


def _type(code: str, types: dict[str, str], what: str) -> str:
    if code not in types:
        raise _Bad(f"unknown {what} type code {code!r} (positions 123-124)")
    return types[code]


def _parse_record(record: str, rows: ParsedDirectory) -> None:
    satzart = record[0:2]
    land, rb, kreis, gemeinde, verband = record[10:12], record[12:13], record[13:15], record[15:18], record[18:22]
    if satzart == "10":
        rows.laender.append({"key": _digits(land, "Land"), "name": _name(record), "seat": _text(record[72:122])})
    elif satzart == "20":
        name = _name(record)
        rows.regierungsbezirke.append({
            "key": _digits(land + rb, "Land+RB"), "name": name, "seat": _text(record[72:122]),
            "active": not name.startswith(_INACTIVE_RB_PREFIXES),
        })
    elif satzart == "30":
        rows.regionen.append({"key": _digits(record[10:14], "Region"), "name": _name(record),
                              "seat": _text(record[72:122])})
    elif satzart == "40":
        code = record[122:124]
        rows.kreise.append({
            "key": _digits(land + rb + kreis, "Kreis"), "name": _name(record), "seat": _text(record[72:122]),
            "type_code": code, "type": _type(code, KREIS_TYPES, "Kreis"), "kreisfrei": code in KREISFREI_TYPES,
        })
    elif satzart == "50":
        code = record[122:124]
        rows.verbaende.append({
            "ars": _digits(land + rb + kreis + verband, "Verband"), "name": _name(record),
            "seat": _text(record[72:122]), "type_code": code, "type": _type(code, VERBAND_TYPES, "Verband"),
        })
    elif satzart == "60":
        code = record[122:124]
        ags = _digits(land + rb + kreis + gemeinde, "AGS")
        multi = record[170:175]
        if multi.strip() not in ("", "*****"):
            raise _Bad(f"positions 171-175 must be blank or '*****', got {multi!r}")
        postal_code = _digits(record[165:170], "PLZ", blank_ok=True) or None
        rows.gemeinden.append({
            "ags": ags, "ars": ags[:5] + _digits(verband, "Verband") + ags[5:], "name": _name(record),
            "type_code": code, "type": _type(code, GEMEINDE_TYPES, "Gemeinde"),
            "area_ha": _number(record[128:139], "Fläche"), "population": _number(record[139:150], "Bevölkerung"),
            "postal_code": postal_code,
            "postal_code_unique": postal_code is not None and multi.strip() != "*****",
        })
    else:
        raise _Bad(f"unknown Satzart {satzart!r}")


def _check_date(value: str) -> str:
    _digits(value, "Gebietsstand")
    try:
        dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        raise _Bad(f"Gebietsstand {value!r} is not a date (YYYYMMDD)") from None
    return value


def parse_bytes(data: bytes) -> ParsedDirectory:
    """Parse a whole GV100AD file; raises MalformedDirectory naming every bad line."""
    errors: list[tuple[int, str]] = []
    rows: ParsedDirectory | None = None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        raw = raw.removesuffix(b"\r")
        try:
            record = raw.decode("utf-8")
        except UnicodeDecodeError:
            errors.append((number, "not UTF-8"))
            continue
        if len(record) != RECORD_LENGTH:
            errors.append((number, f"{len(record)} characters instead of {RECORD_LENGTH}"))
            continue
        try:
            stand = _check_date(record[2:10])
            if rows is None:
                rows = ParsedDirectory(gebietsstand=stand)
            elif stand != rows.gebietsstand:
                raise _Bad(f"Gebietsstand {stand} differs from {rows.gebietsstand} of the first record")
            _parse_record(record, rows)
        except _Bad as exc:
            errors.append((number, str(exc)))
    if rows is None and not errors:
        errors.append((1, "the file holds no records"))
    if errors:
        raise MalformedDirectory(errors)
    assert rows is not None
    for kind, key in (("gemeinden", "ags"), ("kreise", "key"), ("verbaende", "ars"), ("laender", "key")):
        seen: set[object] = set()
        for row in getattr(rows, kind):
            if row[key] in seen:
                errors.append((0, f"duplicate {kind} key {row[key]}"))
            seen.add(row[key])
    if errors:
        raise MalformedDirectory(errors)
    return rows


def parse(path: Path) -> ParsedDirectory:
    """Parse the GV100AD file at ``path``."""
    return parse_bytes(path.read_bytes())
