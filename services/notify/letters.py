"""Letters for applicants without a digital channel: an A4 PDF in the DIN 5008 layout (form B), for printing.

Positions in millimetres from the top left corner of the page (DIN 5008:2020, form B):

- letterhead above 45 mm;
- address field 20–105 mm from the left, 45–90 mm from the top: the sender line ("Rücksendeangabe") at the
  bottom of its 17.7 mm "Zusatz- und Vermerkzone", the recipient in the 27.3 mm "Anschriftzone" below, text
  starting 25 mm from the left, so it shows in a window envelope (C4, C5/6, DL);
- information block (reference, date) 125 mm from the left, from 50 mm down;
- subject at 103.4 mm, without a "Betreff:" label, in bold; body below with a 25 mm left and 20 mm right margin;
- fold marks at 105 mm and 210 mm, the hole mark at 148.5 mm.

The built-in PDF fonts cover Windows-1252 (German umlauts, „ “ – €); other characters are transliterated.
"""

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fpdf import FPDF

ENCODING = "windows-1252"
LEFT = 25.0
RIGHT_MARGIN = 20.0
ADDRESS_TOP = 45.0
ADDRESS_ZONE_TOP = 62.7
ADDRESS_BOTTOM = 90.0
INFO_LEFT = 125.0
INFO_TOP = 50.0
SUBJECT_TOP = 103.4
LINE = 5.0

LABELS = {
    "de": {"reference": "Aktenzeichen", "date": "Datum", "page": "Seite {page} von {pages}"},
    "en": {"reference": "Reference", "date": "Date", "page": "Page {page} of {pages}"},
}


@dataclass(frozen=True)
class LetterContent:
    """What goes on a letter; the recipient's lines are name, street, postal code and city, country."""

    sender_line: str
    letterhead: str
    recipient: list[str]
    reference: str
    subject: str
    body: str
    language: str
    date: date


def printable(text: str) -> str:
    """``text`` in the characters the built-in fonts can print: others decomposed (é → e) or replaced by "?"."""
    out: list[str] = []
    for char in text:
        try:
            char.encode(ENCODING)
        except UnicodeEncodeError:
            base = unicodedata.normalize("NFKD", char).encode(ENCODING, errors="ignore").decode(ENCODING)
            out.append(base or "?")
        else:
            out.append(char)
    return "".join(out)


def format_date(day: date, language: str) -> str:
    """The date as DIN 5008 writes it: ``28.11.2026`` in German, ISO 8601 ``2026-11-28`` otherwise."""
    return day.strftime("%d.%m.%Y") if language == "de" else day.isoformat()


@cache
def _letter_type() -> Callable[[str], "FPDF"]:
    """The letter's page layout: an FPDF with fold and hole marks and a page number.

    fpdf2 and what it imports take some 30 MB of memory: imported on the first letter, not with the service (most
    applicants choose a digital channel).
    """
    from fpdf import FPDF

    class Letter(FPDF):
        def __init__(self, page_label: str) -> None:
            super().__init__(orientation="P", unit="mm", format="A4")
            self.page_label = page_label
            self.core_fonts_encoding = ENCODING
            self.set_margins(LEFT, 20.0, RIGHT_MARGIN)
            self.set_auto_page_break(auto=True, margin=25.0)
            self.alias_nb_pages()

        def header(self) -> None:
            # Fold marks (105 mm, 210 mm) and the hole mark (148.5 mm) at the left edge of every page.
            self.set_line_width(0.2)
            for y, length in ((105.0, 5.0), (148.5, 8.0), (210.0, 5.0)):
                self.line(3.0, y, 3.0 + length, y)

        def footer(self) -> None:
            self.set_y(-15)
            self.set_font("Helvetica", size=8)
            self.cell(0, 4, self.page_label.format(page=self.page_no(), pages="{nb}"), align="R")

    return Letter


def render_letter(content: LetterContent) -> bytes:
    """The letter as PDF bytes."""
    labels = LABELS.get(content.language, LABELS["de"])
    pdf = _letter_type()(labels["page"])
    pdf.set_title(printable(content.subject))
    pdf.set_creator("OZG notify")
    pdf.add_page()

    pdf.set_font("Helvetica", style="B", size=14)
    pdf.set_xy(LEFT, 20.0)
    pdf.cell(0, 7, printable(content.letterhead))

    # Sender line at the bottom of the Zusatz- und Vermerkzone, small and underlined.
    pdf.set_font("Helvetica", size=7)
    pdf.set_xy(LEFT, ADDRESS_ZONE_TOP - 5.0)
    pdf.cell(80.0, 4, printable(content.sender_line), border="B")

    # The recipient in the Anschriftzone: at most 6 lines of 12 pt.
    pdf.set_font("Helvetica", size=10)
    y = ADDRESS_ZONE_TOP + 1.0
    for line in content.recipient[:6]:
        pdf.set_xy(LEFT, y)
        pdf.cell(80.0, 4.23, printable(line))
        y += 4.23

    pdf.set_font("Helvetica", size=9)
    for row, (label, value) in enumerate(
        ((labels["reference"], content.reference), (labels["date"], format_date(content.date, content.language)))
    ):
        pdf.set_xy(INFO_LEFT, INFO_TOP + row * 4.5)
        pdf.cell(75.0, 4.5, printable(f"{label}: {value}"))

    pdf.set_font("Helvetica", style="B", size=11)
    pdf.set_xy(LEFT, SUBJECT_TOP)
    pdf.multi_cell(0, LINE, printable(content.subject), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(LINE)
    pdf.set_font("Helvetica", size=11)
    pdf.multi_cell(0, LINE, printable(content.body.rstrip("\n")), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def letter_filename(reference: str, notification_id: str) -> str:
    """The outbox file of one notification: the case reference and the notification id, nothing personal."""
    safe = re.sub(r"[^A-Za-z0-9-]", "_", reference)[:40]
    return f"{safe}_{notification_id}.pdf"
