"""Per-test outcomes, written as JSON to ``$DRS_PEER_RESULT_FILE`` by both suites' recorders.

File format (read back by ``tests/peer/results.py``)::

    {"format": 1, "tests": {"<test id>": {"outcome": "<outcome>", "detail": "<traceback>"}}}

Outcomes: ``passed``, ``failed``, ``error``, ``skipped``, ``xfail`` (an expected failure) and
``xpass`` (an unexpected success, counted as a failure). When a test reports more than once
(sub-tests, a teardown error after a pass), the worst outcome wins and details add up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FORMAT = 1
OUTCOMES = ("passed", "failed", "error", "skipped", "xfail", "xpass")
_RANK = {"passed": 0, "xfail": 0, "skipped": 1, "xpass": 2, "failed": 3, "error": 4}
MAX_DETAIL = 12_000


class Recorder:
    def __init__(self) -> None:
        self.tests: dict[str, dict[str, Any]] = {}

    def add(self, test_id: str, outcome: str, detail: str = "") -> None:
        if outcome not in _RANK:
            raise ValueError(f"unknown outcome {outcome!r}")
        entry = self.tests.get(test_id)
        if entry is None:
            self.tests[test_id] = {"outcome": outcome, "detail": detail[-MAX_DETAIL:]}
            return
        if _RANK[outcome] > _RANK[entry["outcome"]]:
            entry["outcome"] = outcome
        if detail:
            joined = f"{entry['detail']}\n{detail}" if entry["detail"] else detail
            entry["detail"] = joined[-MAX_DETAIL:]

    def write(self, path: str | os.PathLike[str] | None = None) -> Path | None:
        target = path or os.environ.get("DRS_PEER_RESULT_FILE")
        if not target:
            return None
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_suffix(target.suffix + ".tmp")
        temporary.write_text(json.dumps({"format": FORMAT, "tests": self.tests}, indent=1))
        temporary.replace(target)
        return target
