"""Sphinx extension: the ``RESILIENT_SESSIONS`` reference, generated from the code.

``resilient-settings`` (a directive, used once, in ``configuration.md``) renders a
summary table and one entry per setting, ``KEY: type = default``: the documented
type, the default taken from ``django_resilient_sessions.conf.DEFAULTS``, the
accepted values in the words of the system check that enforces them
(``checks.VALIDATORS``, check E003), and the description written in the block
(Markdown). A key missing from the block,
one that is not a setting, a repeated key, keys out of order or a type the default
does not fit is an error, so ``make docs`` (``-W``) fails until the page follows
the code. See ``settings_reference.py`` for the block's format.

Each entry is a ``setting`` object of the standard domain: other pages link to it
with ``{setting}`KEY```, and a link to a key that does not exist fails the build too.
"""

from __future__ import annotations

from typing import Any

import settings_reference as reference
from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)


class ResilientSettings(SphinxDirective):
    has_content = True
    required_arguments = 0
    optional_arguments = 0

    def run(self) -> list[nodes.Node]:
        from django_resilient_sessions import checks, conf

        # Rebuild this page whenever the code it is generated from changes.
        for module in (conf, checks):
            if module.__file__:
                self.env.note_dependency(module.__file__)
        lines = list(self.content)
        try:
            entries = reference.parse(lines)
        except reference.SourceError as error:
            return [self._error(error.line, str(error))]
        messages = [
            self._error(line, message)
            for line, message in reference.problems(entries, conf.DEFAULTS)
        ]
        known = [entry for entry in entries if entry.key in conf.DEFAULTS]
        described = {entry.key: entry for entry in reversed(known)}  # first one wins
        ordered = [described[key] for key in conf.DEFAULTS if key in described]
        result: list[nodes.Node] = [*messages, self._summary(ordered, conf.DEFAULTS)]
        for entry in ordered:
            result.extend(self._entry(entry, conf.DEFAULTS[entry.key], checks.VALIDATORS))
        return result

    def _error(self, line: int, message: str) -> nodes.Node:
        # MyST's content_offset is not the page's line; the directive's own line is.
        location = (self.env.docname, self.lineno + line + 1)
        logger.error("resilient-settings: %s", message, location=location)
        return nodes.paragraph(text="")

    @staticmethod
    def _target(key: str) -> str:
        return "setting-" + key.lower().replace("_", "-")

    def _summary(self, entries: list[reference.Entry], defaults: dict[str, Any]) -> nodes.table:
        table = nodes.table(classes=["drs-settings-summary"])
        group = nodes.tgroup(cols=3)
        table += group
        for width in (40, 25, 35):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        group += head
        head += self._row([nodes.Text("setting"), nodes.Text("type"), nodes.Text("default")])
        body = nodes.tbody()
        group += body
        for entry in entries:
            link = nodes.reference(
                "", "", nodes.literal(text=entry.key), internal=True, refid=self._target(entry.key)
            )
            body += self._row(
                [
                    link,
                    nodes.literal(text=entry.type),
                    nodes.literal(text=reference.default_literal(defaults[entry.key])),
                ]
            )
        return table

    @staticmethod
    def _row(cells: list[nodes.Node]) -> nodes.row:
        row = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            entry += nodes.paragraph("", "", cell)
            row += entry
        return row

    def _entry(
        self, entry: reference.Entry, default: Any, validators: dict[str, tuple[Any, str]]
    ) -> list[nodes.Node]:
        target = self._target(entry.key)
        index = addnodes.index(entries=[("pair", f"{entry.key}; setting", target, "", None)])
        desc = addnodes.desc(
            domain="std", objtype="setting", desctype="setting", no_index=False, noindex=False
        )
        desc["classes"].extend(["std", "setting"])
        signature = addnodes.desc_signature("", "", ids=[target], classes=["sig", "sig-object"])
        signature["_toc_name"] = entry.key
        signature["_toc_parts"] = (entry.key,)
        signature += addnodes.desc_name(entry.key, entry.key)
        signature += addnodes.desc_annotation(
            "",
            "",
            addnodes.desc_sig_punctuation("", ":"),
            addnodes.desc_sig_space(),
            nodes.Text(entry.type),
            addnodes.desc_sig_space(),
            addnodes.desc_sig_punctuation("", "="),
            addnodes.desc_sig_space(),
            nodes.Text(reference.default_literal(default)),
        )
        desc += signature
        self.set_source_info(signature)
        self.env.get_domain("std").note_object("setting", entry.key, target, location=signature)

        content = addnodes.desc_content()
        desc += content
        facts = nodes.paragraph()
        facts += nodes.strong(text="Accepted: ")
        facts += nodes.Text(validators[entry.key][1] + ".")
        content += facts
        offset = entry.line + 1  # the line after the header; MyST counts from the block
        content.extend(self.parse_text_to_nodes(entry.description, offset=offset))
        return [index, desc]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_object_type("setting", "setting", indextemplate="pair: %s; setting")
    app.add_directive(reference.DIRECTIVE, ResilientSettings)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
