"""Competence (Zuständigkeit): which authority handles a service for a Gemeinde, and by which rule.

The walking skeleton knows the structural rules that hold across Länder; per-Land rule files (SPEC §6) replace
this in the routing issue.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.routing.directory import Directory, Gemeinde
from shared import catalogue
from shared.events import Authority, AuthorityLevel


class NoCompetenceRule(LookupError):
    """No rule decides competence for this service."""


@dataclass(frozen=True)
class Decision:
    """The competent authority and the name of the rule that decided it."""

    authority: Authority
    rule: str


def competent_authority(directory: Directory, gemeinde: Gemeinde, leika_key: str) -> Decision:
    """Decide the competent authority for ``leika_key`` in ``gemeinde``."""
    entry = catalogue.load().get(leika_key)
    if entry is None:
        raise NoCompetenceRule(f"no competence rule for service {leika_key}")
    kreis = directory.kreise[gemeinde.kreis_key]
    if kreis.kreisfrei:
        # A kreisfreie Stadt does both the Gemeinde's and the Landratsamt's tasks.
        return Decision(Authority(ars=kreis.key, name=kreis.name, level=AuthorityLevel.KREIS),
                        "default:kreisfreie-stadt")
    if entry.level == "kreis":
        return Decision(Authority(ars=kreis.key, name=kreis.name, level=AuthorityLevel.KREIS), "default:kreis")
    if entry.level == "gemeinde":
        verband = directory.verbaende.get(gemeinde.verband_ars)
        if verband is not None and verband.type == "Verwaltungsgemeinschaft":
            # Member Gemeinden leave the tasks of the übertragener Wirkungskreis to their VG (Art. 4 VGemO).
            return Decision(Authority(ars=verband.ars, name=verband.name, level=AuthorityLevel.VERBAND),
                            "default:verwaltungsgemeinschaft")
        return Decision(Authority(ars=gemeinde.ars, name=gemeinde.name, level=AuthorityLevel.GEMEINDE),
                        "default:gemeinde")
    raise NoCompetenceRule(f"no competence rule for level {entry.level} of service {leika_key}")
