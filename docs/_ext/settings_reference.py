"""The configuration reference: what ``docs/configuration.md`` says of each setting.

No Sphinx here (``tests/test_docs_site.py`` imports this module in every test venv).
The page holds one ``resilient-settings`` block: for each key of
``RESILIENT_SESSIONS``, a header line ``KEY: type`` followed by its description,
indented by two spaces (Markdown)::

    BACKUP_COOKIE_NAME: str
      Name of the backup cookie...

The default of each key is never written there: it comes from ``conf.DEFAULTS``,
and the accepted values from the system check's own wording (``checks.VALIDATORS``),
so neither can drift. :func:`problems` lists what is wrong with a block (a key
missing, extra, repeated or out of order, a type its default does not fit); the
Sphinx extension fails the build on any of them, and so does the test.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PAGE = Path(__file__).resolve().parent.parent / "configuration.md"
DIRECTIVE = "resilient-settings"

_HEADER = re.compile(r"^([A-Z][A-Z0-9_]*):\s+(\S.*?)\s*$")
_OPENING = re.compile(r"^(`{3,}|:{3,})\{" + re.escape(DIRECTIVE) + r"\}\s*$")
_SIMPLE_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),  # as in typing: an int is an acceptable float
    "bool": (bool,),
}


class SourceError(ValueError):
    """A line of the block that is neither a header, a description line nor blank."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(f"line {line + 1} of the block: {message}")
        self.line = line


@dataclass(frozen=True)
class Entry:
    """One setting as the page describes it."""

    key: str
    type: str
    description: str
    #: Index of the header line within the block (for error locations).
    line: int


def parse(lines: Iterable[str]) -> list[Entry]:
    """The entries of a block's content lines, in their order."""
    entries: list[Entry] = []
    header: tuple[str, str, int] | None = None
    body: list[str] = []

    def close() -> None:
        if header is not None:
            key, type_, line = header
            text = "\n".join(body).strip("\n")
            entries.append(Entry(key, type_, text, line))

    for number, line in enumerate(lines):
        if not line.strip():
            body.append("")
            continue
        match = _HEADER.match(line)
        if match:
            close()
            header, body = (match.group(1), match.group(2), number), []
            continue
        if not line.startswith("  "):
            raise SourceError(
                f"expected 'KEY: type' or a description indented by two spaces: {line!r}", number
            )
        if header is None:
            raise SourceError("a description before the first 'KEY: type' line", number)
        body.append(line[2:])
    close()
    return entries


def block_of(text: str) -> list[str]:
    """The content lines of the ``resilient-settings`` block of a MyST page."""
    lines = text.splitlines()
    for start, line in enumerate(lines):
        opening = _OPENING.match(line)
        if opening:
            fence = opening.group(1)
            for end in range(start + 1, len(lines)):
                if lines[end].strip() == fence:
                    return lines[start + 1 : end]
            raise ValueError(f"the {DIRECTIVE} block opened on line {start + 1} never closes")
    raise ValueError(f"no {DIRECTIVE} block")


def read_page(path: Path = PAGE) -> list[Entry]:
    """The entries of ``docs/configuration.md`` (or of the page at ``path``)."""
    return parse(block_of(path.read_text(encoding="utf-8")))


def conforms(value: Any, type_text: str) -> bool:
    """Does ``value`` fit the documented type (``str``, ``int | None``, ``list[str]``,
    ``"a" | "b"``...)?"""
    for alternative in (part.strip() for part in type_text.split("|")):
        if alternative == "None":
            if value is None:
                return True
        elif alternative in _SIMPLE_TYPES:
            bool_ok = alternative == "bool"
            if isinstance(value, _SIMPLE_TYPES[alternative]) and (
                bool_ok or not isinstance(value, bool)
            ):
                return True
        elif alternative == "list[str]":
            if isinstance(value, list) and all(isinstance(item, str) for item in value):
                return True
        elif len(alternative) >= 2 and alternative[0] == alternative[-1] == '"':
            if value == alternative[1:-1]:
                return True
        else:
            raise ValueError(f"unknown type {alternative!r} in {type_text!r}")
    return False


def default_literal(value: Any) -> str:
    """The default as a Python literal, strings in double quotes (``"sessionbackup"``)."""
    if isinstance(value, str):
        if '"' in value or "\\" in value:
            return repr(value)
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(default_literal(item) for item in value) + "]"
    return repr(value)


def problems(entries: list[Entry], defaults: Mapping[str, Any]) -> list[tuple[int, str]]:
    """What is wrong with the page's entries, as (line, message) pairs; empty when all is well."""
    found: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for entry in entries:
        if entry.key in seen:
            found.append((entry.line, f"{entry.key} is described twice"))
            continue
        seen[entry.key] = entry.line
        if entry.key not in defaults:
            found.append((entry.line, f"{entry.key} is not a setting (not in conf.DEFAULTS)"))
            continue
        if not entry.description:
            found.append((entry.line, f"{entry.key} has no description"))
        try:
            fits = conforms(defaults[entry.key], entry.type)
        except ValueError as error:
            found.append((entry.line, f"{entry.key}: {error}"))
        else:
            if not fits:
                found.append(
                    (
                        entry.line,
                        f"{entry.key}: its default {default_literal(defaults[entry.key])} "
                        f"is not of the documented type {entry.type}",
                    )
                )
    missing = [key for key in defaults if key not in seen]
    if missing:
        found.append((0, "settings not described: " + ", ".join(missing)))
    documented = [key for key in seen if key in defaults]
    if not missing and documented != list(defaults):
        found.append((0, "settings not in the order of conf.DEFAULTS: " + ", ".join(documented)))
    return found
