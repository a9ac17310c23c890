"""CSV fields a spreadsheet will not run as a formula.

Lab staff open the cell tables in Excel, LibreOffice or Sheets, and those read a field that starts with
``= + - @`` (or a tab / carriage return) as a formula: an image named ``=HYPERLINK(...).png`` would become a
live link or worse (CSV injection). Text fields that start so get a leading apostrophe, which every
spreadsheet shows as text (OWASP's advice); numbers such as ``-0.5`` stay numbers. The product's own
CSV readers take the apostrophe off again (:func:`unguard`), so a table round-trips exactly.
"""

from __future__ import annotations

from typing import Any

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def _needs_quote(text: str) -> bool:
    """Text a spreadsheet would read as a formula, or text that already looks guarded (so it round-trips)."""
    head = text.lstrip("'")
    if not head.startswith(TRIGGERS):
        return False
    if not text.startswith("'"):  # a bare number (-0.5, +3, -inf) is data, not a formula
        try:
            float(text)
            return False
        except ValueError:
            return True
    return True


def guard(value: Any) -> Any:
    """`value` as a CSV field that opens as text; anything but a string passes through unchanged."""
    return "'" + value if isinstance(value, str) and _needs_quote(value) else value


def unguard(text: str) -> str:
    """Undo :func:`guard` on a field read back from one of the product's CSVs."""
    return text[1:] if text.startswith("'") and _needs_quote(text[1:]) else text


def unguard_row(row: dict[str, Any]) -> dict[str, Any]:
    """A csv.DictReader row with every string field through :func:`unguard`."""
    return {k: unguard(v) if isinstance(v, str) else v for k, v in row.items()}
