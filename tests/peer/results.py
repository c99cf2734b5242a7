"""Compare the two engines' outcomes and decide whether the peer run passes.

For every suite and mode, each test is classified from its outcome with our engine and with
Django's ``cache`` engine (``failed``, ``error`` and ``xpass`` are failures):

``engine-only``
    fails with ours, not with ``cache``: it must match an entry of ``expected_failures.toml``
    (a failure *by design*, with its reason) or the run fails;
``both``
    fails with both engines: not ours (listed in the report, never fails the run);
``cache-only``
    fails with ``cache`` only (listed, for information);
``unreferenced``
    fails with ours while there is no ``cache`` run of the same suite, mode and test labels
    to compare with: it fails the run unless expected (run ``--engine both``).
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

BAD = frozenset({"failed", "error", "xpass"})
EXPECTED_FILE = Path(__file__).resolve().parent / "expected_failures.toml"
SUITES = ("django", "allauth")


# -- expected failures ------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    suite: str
    test: str
    reason: str
    modes: tuple[str, ...] = ("*",)
    error: str | None = None

    def applies(self, suite: str, mode: str) -> bool:
        return suite == self.suite and any(fnmatch.fnmatchcase(mode, m) for m in self.modes)

    def matches(self, suite: str, mode: str, test_id: str, detail: str = "") -> bool:
        """Does this entry excuse ``test_id`` failing in ``mode`` with ``detail``?

        With ``error`` set, the failure's traceback must also match that regular
        expression: the same test failing for another reason is not excused.
        """
        return (
            self.applies(suite, mode)
            and fnmatch.fnmatchcase(test_id, self.test)
            and (self.error is None or re.search(self.error, detail) is not None)
        )


def load_expected(path: Path = EXPECTED_FILE) -> list[Expected]:
    """The entries of ``expected_failures.toml`` (``[[expected]]`` tables), validated."""
    data = tomllib.loads(path.read_text())
    unknown = set(data) - {"expected"}
    if unknown:
        raise ValueError(f"{path.name}: unknown top-level keys {sorted(unknown)}")
    entries: list[Expected] = []
    for number, raw in enumerate(data.get("expected", []), start=1):
        where = f"{path.name}, entry {number}"
        extra = set(raw) - {"suite", "test", "reason", "modes", "error"}
        if extra:
            raise ValueError(f"{where}: unknown keys {sorted(extra)}")
        suite, test, reason = raw.get("suite"), raw.get("test"), raw.get("reason", "")
        if suite not in SUITES:
            raise ValueError(f"{where}: suite must be one of {SUITES}, not {suite!r}")
        if not isinstance(test, str) or not test:
            raise ValueError(f"{where}: test must be a test id or pattern")
        if not isinstance(reason, str) or len(reason.strip()) < 20:
            raise ValueError(f"{where} ({test}): give the reason (at least a sentence)")
        modes = raw.get("modes", ["*"])
        if not isinstance(modes, list) or not modes or not all(isinstance(m, str) for m in modes):
            raise ValueError(f"{where} ({test}): modes must be a non-empty list of mode patterns")
        error = raw.get("error")
        if error is not None:
            if not isinstance(error, str) or not error:
                raise ValueError(f"{where} ({test}): error must be a regular expression")
            re.compile(error)
        entries.append(Expected(suite, test, " ".join(reason.split()), tuple(modes), error))
    return entries


# -- run files --------------------------------------------------------------------------------


@dataclass
class Run:
    """One suite in one mode with one engine: ``<suite>-<mode>-<engine>.json``."""

    suite: str
    mode: str
    engine: str
    meta: dict[str, Any]
    tests: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, path: Path) -> Run:
        data = json.loads(path.read_text())
        meta = data["meta"]
        return cls(meta["suite"], meta["mode"], meta["engine"], meta, data.get("tests", {}))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"meta": self.meta, "tests": self.tests}, indent=1))

    @property
    def crashed(self) -> str | None:
        """Why the run's results cannot be trusted, or None."""
        reason: str | None = self.meta.get("crash")
        return reason

    def counts(self) -> dict[str, int]:
        counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
        for entry in self.tests.values():
            outcome = entry["outcome"]
            if outcome in ("passed", "xfail"):
                counts["passed"] += 1
            elif outcome in ("failed", "xpass"):
                counts["failed"] += 1
            elif outcome == "error":
                counts["errors"] += 1
            else:
                counts["skipped"] += 1
        return counts

    def comparable_with(self, other: Run) -> bool:
        keys = ("suite", "mode", "labels", "django_version", "suite_version")
        return all(self.meta.get(k) == other.meta.get(k) for k in keys)


def run_path(artifacts: Path, suite: str, mode: str, engine: str) -> Path:
    return artifacts / f"{suite}-{mode}-{engine}.json"


# -- classification ---------------------------------------------------------------------------

_VOLATILE = (
    (re.compile(r"0x[0-9a-f]+"), "0x…"),
    (re.compile(r"\b[0-9a-f]{32}\b"), "<hex>"),
    (re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?"), "<datetime>"),
)
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupted|Warning)\b")


def essence(detail: str) -> str:
    """The line of a traceback that says what went wrong, without run-specific values.

    pytest: the first ``E`` line of the last block of them; unittest: the last line that
    names an exception.
    """
    lines = [line.rstrip() for line in detail.splitlines() if line.strip()]
    marked = [i for i, line in enumerate(lines) if line.startswith("E ")]
    if marked:
        first = marked[-1]
        while first - 1 in marked:
            first -= 1
        line = lines[first][1:].strip()
    else:
        candidates = [line.strip() for line in lines if _EXCEPTION_LINE.match(line.strip())]
        line = (candidates or [line.strip() for line in lines] or ["(no detail)"])[-1]
    for pattern, replacement in _VOLATILE:
        line = pattern.sub(replacement, line)
    return line[:240]


@dataclass
class Finding:
    suite: str
    mode: str
    test: str
    kind: str  # engine-only, both, cache-only, unreferenced
    ours: str | None
    cache: str | None
    detail: str = ""
    expected: Expected | None = None
    cache_detail: str = ""

    @property
    def essence(self) -> str:
        return essence(self.detail)


@dataclass
class Comparison:
    suite: str
    mode: str
    ours: Run | None
    cache: Run | None
    findings: list[Finding] = field(default_factory=list)
    not_run_with_ours: int = 0
    stale: list[Expected] = field(default_factory=list)

    @property
    def unexpected(self) -> list[Finding]:
        return [
            f
            for f in self.findings
            if f.kind in ("engine-only", "unreferenced") and f.expected is None
        ]

    @property
    def crashes(self) -> list[str]:
        out = []
        for run in (self.ours, self.cache):
            if run is not None and run.crashed:
                out.append(f"{run.suite} {run.mode} {run.engine}: {run.crashed}")
        return out


def compare(
    suite: str, mode: str, ours: Run | None, cache: Run | None, expected: list[Expected]
) -> Comparison:
    result = Comparison(suite, mode, ours, cache)
    reference = (
        cache if cache is not None and (ours is None or ours.comparable_with(cache)) else None
    )
    result.cache = reference
    ours_tests = ours.tests if ours is not None else {}
    cache_tests = reference.tests if reference is not None else {}
    for test_id in sorted(set(ours_tests) | set(cache_tests)):
        mine = ours_tests.get(test_id, {}).get("outcome")
        theirs = cache_tests.get(test_id, {}).get("outcome")
        mine_bad, theirs_bad = mine in BAD, theirs in BAD
        if ours is not None and mine is None and theirs is not None:
            result.not_run_with_ours += 1
        if mine_bad and theirs_bad:
            kind = "both"
        elif mine_bad:
            kind = "engine-only" if reference is not None else "unreferenced"
        elif theirs_bad and ours is not None:
            kind = "cache-only"
        else:
            continue
        detail = (ours_tests if mine_bad else cache_tests)[test_id].get("detail", "")
        match = None
        if kind in ("engine-only", "unreferenced"):
            match = next((e for e in expected if e.matches(suite, mode, test_id, detail)), None)
        cache_detail = cache_tests[test_id].get("detail", "") if kind == "both" else ""
        result.findings.append(
            Finding(suite, mode, test_id, kind, mine, theirs, detail, match, cache_detail)
        )
    if ours is not None:
        for entry in expected:
            if not entry.applies(suite, mode):
                continue
            ran = [t for t in ours_tests if fnmatch.fnmatchcase(t, entry.test)]
            if ran and not any(ours_tests[t]["outcome"] in BAD for t in ran):
                result.stale.append(entry)
    return result


# -- report -----------------------------------------------------------------------------------


def group_by_essence(findings: list[Finding]) -> list[tuple[str, list[Finding]]]:
    """Findings grouped by cause (expected reason, else traceback essence), biggest first."""
    groups: dict[str, list[Finding]] = defaultdict(list)
    for finding in findings:
        key = finding.expected.reason if finding.expected else finding.essence
        if finding.kind == "both" and finding.cache_detail:
            cache_essence = essence(finding.cache_detail)
            if cache_essence != key:
                key = f"ours: {key} / cache: {cache_essence}"
        groups[key].append(finding)
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))


def _cells(run: Run | None) -> list[str]:
    if run is None:
        return ["-"] * 5
    c = run.counts()
    wall = f"{run.meta.get('wall_seconds') or 0:.0f}s" + (" CRASH" if run.crashed else "")
    return [str(c["passed"]), str(c["failed"]), str(c["errors"]), str(c["skipped"]), wall]


def table(comparisons: list[Comparison]) -> str:
    """Both engines' counts side by side, one line per suite and mode."""
    header = ["suite", "mode"]
    for engine in ("ours", "cache"):
        header += [f"{engine}:passed", "failed", "errors", "skipped", "wall"]
    header += ["engine-only", "by-design", "both"]
    rows = [header]
    for c in comparisons:
        engine_only = [f for f in c.findings if f.kind in ("engine-only", "unreferenced")]
        by_design = [f for f in engine_only if f.expected is not None]
        both = [f for f in c.findings if f.kind == "both"]
        counts = [str(len(engine_only)), str(len(by_design)), str(len(both))]
        rows.append([c.suite, c.mode, *_cells(c.ours), *_cells(c.cache), *counts])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append(
            " | ".join(
                [
                    " ".join(cells[:2]),
                    " ".join(cells[2:7]),
                    " ".join(cells[7:12]),
                    " ".join(cells[12:]),
                ]
            )
        )
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _excerpt(detail: str, lines: int = 30) -> str:
    kept = [line for line in detail.rstrip().splitlines()]
    return "\n".join(kept[-lines:])


def markdown(comparisons: list[Comparison]) -> str:
    """The full report: table, unexpected engine-only failures grouped by cause, and so on."""
    out = ["# Peer suites: our engine against Django's cache engine", "", "```text"]
    out += [table(comparisons), "```", ""]
    sections: list[tuple[str, list[Finding], bool]] = [
        ("Engine-only failures not in expected_failures.toml (these fail the run)",
         [f for c in comparisons for f in c.unexpected], True),
        ("Engine-only failures by design (expected_failures.toml)",
         [f for c in comparisons for f in c.findings
          if f.kind in ("engine-only", "unreferenced") and f.expected is not None], False),
        ("Failing with both engines (not ours)",
         [f for c in comparisons for f in c.findings if f.kind == "both"], False),
        ("Failing with the cache engine only",
         [f for c in comparisons for f in c.findings if f.kind == "cache-only"], False),
    ]  # fmt: skip
    for title, findings, tracebacks in sections:
        out += [f"## {title}: {len(findings)}", ""]
        for key, members in group_by_essence(findings):
            out.append(f"### {len(members)} x {key}")
            out.append("")
            by_test: dict[str, list[str]] = defaultdict(list)
            for m in members:
                by_test[f"{m.suite}: {m.test}"].append(m.mode)
            for test, modes in sorted(by_test.items()):
                out.append(f"- `{test}` ({', '.join(sorted(modes))})")
            if tracebacks:
                out += ["", "```text", _excerpt(members[0].detail), "```"]
            out.append("")
    stale = {(e.suite, e.test) for c in comparisons for e in c.stale}
    if stale:
        out += ["## Entries of expected_failures.toml that passed (remove them?)", ""]
        out += [f"- {suite}: `{test}`" for suite, test in sorted(stale)]
        out.append("")
    crashes = [crash for c in comparisons for crash in c.crashes]
    if crashes:
        out += ["## Runs that did not complete", ""] + [f"- {c}" for c in crashes] + [""]
    return "\n".join(out)


def summary(comparisons: list[Comparison]) -> dict[str, Any]:
    def counts(run: Run | None) -> dict[str, Any] | None:
        if run is None:
            return None
        return {**run.counts(), "wall_seconds": run.meta.get("wall_seconds"), "crash": run.crashed}

    return {
        "comparisons": [
            {
                "suite": c.suite,
                "mode": c.mode,
                "ours": counts(c.ours),
                "cache": counts(c.cache),
                "not_run_with_ours": c.not_run_with_ours,
                "findings": [
                    {
                        "test": f.test,
                        "kind": f.kind,
                        "ours": f.ours,
                        "cache": f.cache,
                        "essence": f.essence,
                        "expected_reason": f.expected.reason if f.expected else None,
                    }
                    for f in c.findings
                ],
                "stale_expected": [e.test for e in c.stale],
            }
            for c in comparisons
        ],
        "unexpected": sum(len(c.unexpected) for c in comparisons),
        "crashes": [crash for c in comparisons for crash in c.crashes],
    }
