"""The texts sent to applicants: Jinja2 templates under ``templates/<language>/<template>.txt.j2``.

A template's first line is the subject, the rest is the body. Only case metadata reaches a template (reference,
service and authority names, status, the authority's message); the form data never does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from shared import catalogue

TEMPLATES = Path(__file__).parent / "templates"
LANGUAGES = ("de", "en")
DEFAULT_LANGUAGE = "de"


@dataclass(frozen=True)
class Message:
    """A rendered message in the applicant's language."""

    subject: str
    body: str
    language: str


def service_name(leika_key: str, language: str) -> str:
    """The service's name from the catalogue in ``language``; the bare LeiKa key if the catalogue lacks it."""
    entry = catalogue.load().get(leika_key)
    if entry is None:
        return leika_key
    return entry.name.en if language == "en" else entry.name.de


class Renderer:
    """Renders the message templates of one directory."""

    def __init__(self, directory: Path = TEMPLATES) -> None:
        self.env = Environment(
            loader=FileSystemLoader(directory),
            # Plain-text mail: HTML escaping would put "&amp;" into the text; only .html/.xml templates escape.
            autoescape=select_autoescape(enabled_extensions=("html", "xml"), default_for_string=False, default=False),
            # A misspelt variable fails loudly instead of leaving a gap in a letter to a citizen.
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            # The templates ship with the service: compiled once, never checked for changes on disk per message.
            auto_reload=False,
        )

    def render(self, template: str, language: str, context: Mapping[str, object]) -> Message:
        """Render ``template`` in ``language`` (German when that language has no templates)."""
        language = language if language in LANGUAGES else DEFAULT_LANGUAGE
        text = self.env.get_template(f"{language}/{template}.txt.j2").render(context)
        first, _, rest = text.lstrip("\n").partition("\n")
        # Folding whitespace keeps a stray line break in a name out of the Subject header.
        subject = " ".join(first.split())
        return Message(subject=subject, body=rest.strip("\n") + "\n", language=language)
