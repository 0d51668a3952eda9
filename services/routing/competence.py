"""Competence (Zuständigkeit) as data: which authority handles a service for a Gemeinde, and by which rule.

The rules live in YAML files in one directory (setting ``ROUTING_RULES_DIR``, default ``services/routing/rules``):
one file per Land (``land: "09"``) and one default file (no ``land``) for every Land or service without rules of
its own. Each file lists services, by LeiKa key (``leika``) or by the catalogue's level (``catalogue_level``), each
with an ordered list of rules; the first rule whose ``when`` matches names the competent ``level`` (gemeinde,
verband, kreis, land). Conditions: ``kreisfrei`` (the Gemeinde's Kreis is kreisfrei), ``gemeinde_type``,
``verband_type``, ``kreis_type`` (Destatis type names) and ``in_list`` (the Gemeinde's AGS is in one of the file's
``lists``). A decision is named ``<code>:<rule>``, e.g. ``BY:kreisfreie-stadt``.

For a service in a Land, the Land file's entry naming the LeiKa key wins, then its entry for the service's
catalogue level, then the same two in the default file. See the README for how an operator changes them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.routing.directory import Directory, Gemeinde
from shared import catalogue
from shared.events import Authority, AuthorityLevel

log = logging.getLogger(__name__)

Level = Literal["gemeinde", "verband", "kreis", "land"]


class NoCompetenceRule(LookupError):
    """No rule decides competence for this service here."""


class InvalidRules(ValueError):
    """A rules file is not valid; the message names the file and the problem."""


@dataclass(frozen=True)
class Decision:
    """The competent authority and the name of the rule that decided it."""

    authority: Authority
    rule: str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Condition(_Strict):
    """When a rule applies; every condition given must hold."""

    kreisfrei: bool | None = None
    gemeinde_type: list[str] | None = None
    verband_type: list[str] | None = None
    kreis_type: list[str] | None = None
    in_list: str | None = None


class Rule(_Strict):
    """One rule: its name, when it applies, and the competent level."""

    rule: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$")]
    when: Condition = Condition()
    level: Level


class ServiceRules(_Strict):
    """The rules for some services: named by LeiKa key, or all services of a catalogue level."""

    description: str | None = None
    leika: list[Annotated[str, Field(pattern=r"^99\d{12}$")]] = Field(default_factory=list)
    catalogue_level: Level | None = None
    rules: Annotated[list[Rule], Field(min_length=1)]

    @model_validator(mode="after")
    def _one_selector(self) -> ServiceRules:
        if bool(self.leika) == (self.catalogue_level is not None):
            raise ValueError("give either leika (a list of LeiKa keys) or catalogue_level")
        return self


class RuleFile(_Strict):
    """One rules file: a Land's (``land`` set) or the default (``land`` absent)."""

    land: Annotated[str, Field(pattern=r"^\d{2}$")] | None = None
    code: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9-]*$")]
    name: str
    # Named lists of Gemeinden: AGS -> name (the name is for the reader).
    lists: dict[str, dict[Annotated[str, Field(pattern=r"^\d{8}$")], str]] = Field(default_factory=dict)
    services: list[ServiceRules]

    @model_validator(mode="after")
    def _consistent(self) -> RuleFile:
        seen: set[str] = set()
        levels: set[str] = set()
        for entry in self.services:
            for key in entry.leika:
                if key in seen:
                    raise ValueError(f"service {key} appears twice")
                seen.add(key)
            if entry.catalogue_level is not None:
                if entry.catalogue_level in levels:
                    raise ValueError(f"catalogue_level {entry.catalogue_level} appears twice")
                levels.add(entry.catalogue_level)
            for rule in entry.rules:
                if rule.when.in_list is not None and rule.when.in_list not in self.lists:
                    raise ValueError(f"rule {rule.rule} names the undefined list {rule.when.in_list!r}")
        return self

    def entry_for(self, leika_key: str, level: str | None) -> ServiceRules | None:
        """This file's rules for a service: by its key first, then by its catalogue level."""
        for entry in self.services:
            if leika_key in entry.leika:
                return entry
        if level is not None:
            for entry in self.services:
                if entry.catalogue_level == level:
                    return entry
        return None


def rules_fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in directory.glob("*.yaml")))


class CompetenceRules:
    """All rules files of one directory, loaded and checked."""

    def __init__(self, default: RuleFile, by_land: dict[str, RuleFile],
                 fingerprint: tuple[tuple[str, int, int], ...] = ()) -> None:
        self.default = default
        self.by_land = by_land
        self.fingerprint = fingerprint

    @classmethod
    def load(cls, directory: Path) -> CompetenceRules:
        """Read every ``*.yaml`` in ``directory``; raises InvalidRules naming the bad file."""
        fingerprint = rules_fingerprint(directory)
        default: RuleFile | None = None
        by_land: dict[str, RuleFile] = {}
        known = catalogue.load()
        for path in sorted(directory.glob("*.yaml")):
            try:
                raw = yaml.safe_load(path.read_text(encoding="utf-8"))
                rules = RuleFile.model_validate(raw)
            except (yaml.YAMLError, ValidationError, OSError) as exc:
                raise InvalidRules(f"{path.name}: {exc}") from None
            unknown = [key for entry in rules.services for key in entry.leika if key not in known]
            if unknown:
                raise InvalidRules(f"{path.name}: services not in the catalogue: {', '.join(unknown)}")
            if rules.land is None:
                if default is not None:
                    raise InvalidRules(f"{path.name}: a second default file (no 'land')")
                default = rules
            elif rules.land in by_land:
                raise InvalidRules(f"{path.name}: a second file for Land {rules.land}")
            else:
                by_land[rules.land] = rules
        if default is None:
            raise InvalidRules(f"{directory}: no default rules file (one without 'land')")
        return cls(default, by_land, fingerprint)

    def changed(self, directory: Path) -> bool:
        """Whether the files in ``directory`` differ from the ones loaded (cheap: names, sizes, times)."""
        return rules_fingerprint(directory) != self.fingerprint

    def decide(self, directory: Directory, gemeinde: Gemeinde, leika_key: str) -> Decision:
        """The competent authority for ``leika_key`` in ``gemeinde``; raises NoCompetenceRule."""
        entry_of_catalogue = catalogue.load().get(leika_key)
        level = entry_of_catalogue.level if entry_of_catalogue is not None else None
        for rules in (self.by_land.get(gemeinde.land_key), self.default):
            if rules is None:
                continue
            entry = rules.entry_for(leika_key, level)
            if entry is None:
                continue
            for rule in entry.rules:
                if _matches(rule.when, rules, directory, gemeinde):
                    return Decision(_authority(directory, gemeinde, rule.level, leika_key),
                                    f"{rules.code}:{rule.rule}")
            raise NoCompetenceRule(f"no rule of {rules.code} applies to service {leika_key} in {gemeinde.name}")
        raise NoCompetenceRule(f"no competence rule for service {leika_key}")


def _matches(when: Condition, rules: RuleFile, directory: Directory, gemeinde: Gemeinde) -> bool:
    kreis = directory.kreise.get(gemeinde.kreis_key)
    if when.kreisfrei is not None and (kreis is not None and kreis.kreisfrei) != when.kreisfrei:
        return False
    if when.kreis_type is not None and (kreis is None or kreis.type not in when.kreis_type):
        return False
    if when.gemeinde_type is not None and gemeinde.type not in when.gemeinde_type:
        return False
    if when.verband_type is not None:
        verband = directory.verbaende.get(gemeinde.verband_ars)
        if verband is None or verband.type not in when.verband_type:
            return False
    return when.in_list is None or gemeinde.ags in rules.lists[when.in_list]


def _authority(directory: Directory, gemeinde: Gemeinde, level: str, leika_key: str) -> Authority:
    if level == "gemeinde":
        return Authority(ars=gemeinde.ars, name=gemeinde.name, level=AuthorityLevel.GEMEINDE)
    if level == "verband":
        verband = directory.verbaende.get(gemeinde.verband_ars)
        if verband is not None:
            return Authority(ars=verband.ars, name=verband.name, level=AuthorityLevel.VERBAND)
    elif level == "kreis":
        kreis = directory.kreise.get(gemeinde.kreis_key)
        if kreis is not None:
            return Authority(ars=kreis.key, name=kreis.name, level=AuthorityLevel.KREIS)
    elif level == "land":
        land = directory.laender.get(gemeinde.land_key)
        if land is not None:
            return Authority(ars=land.key, name=land.name, level=AuthorityLevel.LAND)
    raise NoCompetenceRule(f"the directory holds no {level} for {gemeinde.name} (service {leika_key})")


def competent_authority(rules: CompetenceRules, directory: Directory, gemeinde: Gemeinde,
                        leika_key: str) -> Decision:
    """Decide the competent authority for ``leika_key`` in ``gemeinde`` by ``rules``."""
    return rules.decide(directory, gemeinde, leika_key)
