"""pytest plugin (``-p drs_peer_pytest_recorder``): every outcome to ``$DRS_PEER_RESULT_FILE``.

Ids are pytest node ids (``tests/apps/account/test_login.py::test_login``). A failing setup
or teardown is an ``error``; a collection error is recorded under the collector's node id.
"""

from __future__ import annotations

from typing import Any

import pytest
from drs_peer_record import Recorder

_recorder = Recorder()


def _outcome(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return "xpass" if report.passed else "xfail"
    if report.skipped:
        return "skipped"
    if report.failed:
        return "failed" if report.when == "call" else "error"
    return "passed"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    outcome = _outcome(report)
    if report.when != "call" and outcome == "passed":
        return  # a passing setup or teardown says nothing about the test itself
    detail = ""
    if report.failed:
        detail = f"[{report.when}]\n{report.longreprtext}"
    elif report.skipped and isinstance(report.longrepr, tuple):
        detail = str(report.longrepr[2])
    _recorder.add(report.nodeid, outcome, detail)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _recorder.add(report.nodeid or "<collection>", "error", report.longreprtext)


def pytest_sessionfinish(session: pytest.Session, exitstatus: Any) -> None:
    _recorder.write()
