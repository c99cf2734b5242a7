"""``TEST_RUNNER`` for Django's suite: Django's runner, plus a JSON record of every outcome.

* :class:`RecordingResult` is the result class of the main process. With ``--parallel`` the
  workers' events are replayed onto it, so it sees every test.
* :class:`AttributingRemoteResult` fixes how the parallel runner reports class- and
  module-level errors (``setUpClass``, ``setUpTestData``, ``tearDownClass``): Django's
  ``RemoteTestResult`` sends them with the index of the *previous* test of the worker's
  batch, so the parent would blame a test that passed. This one always sends the error's
  own id (``setUpClass (app.tests.SomeTests)``), which the parent already knows how to take.
"""

from __future__ import annotations

import unittest
from typing import Any

from django.test.runner import (
    DiscoverRunner,
    ParallelTestSuite,
    RemoteTestResult,
    RemoteTestRunner,
)
from drs_peer_record import Recorder

ExcInfo = Any


class RecordingResult(unittest.TextTestResult):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorder = Recorder()

    def _detail(self, test: Any, err: ExcInfo) -> str:
        text: str = self._exc_info_to_string(err, test)
        return text

    def addSuccess(self, test: Any) -> None:
        super().addSuccess(test)
        self.recorder.add(test.id(), "passed")

    def addFailure(self, test: Any, err: ExcInfo) -> None:
        super().addFailure(test, err)
        self.recorder.add(test.id(), "failed", self._detail(test, err))

    def addError(self, test: Any, err: ExcInfo) -> None:
        super().addError(test, err)
        self.recorder.add(test.id(), "error", self._detail(test, err))

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)
        self.recorder.add(test.id(), "skipped", reason)

    def addExpectedFailure(self, test: Any, err: ExcInfo) -> None:
        super().addExpectedFailure(test, err)
        self.recorder.add(test.id(), "xfail")

    def addUnexpectedSuccess(self, test: Any) -> None:
        super().addUnexpectedSuccess(test)
        self.recorder.add(test.id(), "xpass", "unexpected success")

    def addSubTest(self, test: Any, subtest: Any, err: ExcInfo | None) -> None:
        super().addSubTest(test, subtest, err)
        if err is None:
            return
        failed = issubclass(err[0], test.failureException)
        header = f"[subtest {subtest._subDescription()}]\n"
        self.recorder.add(
            test.id(), "failed" if failed else "error", header + self._detail(test, err)
        )

    def stopTestRun(self) -> None:
        super().stopTestRun()
        self.recorder.write()


class AttributingRemoteResult(RemoteTestResult):  # type: ignore[misc]
    def addError(self, test: Any, err: ExcInfo) -> None:
        if isinstance(test, unittest.suite._ErrorHolder):
            self.check_picklable(test, err)
            self.events.append(("addError", -1, test.id(), err))
            unittest.TestResult.addError(self, test, err)
            return
        super().addError(test, err)


class AttributingRemoteRunner(RemoteTestRunner):  # type: ignore[misc]
    resultclass = AttributingRemoteResult


class AttributingParallelTestSuite(ParallelTestSuite):  # type: ignore[misc]
    runner_class = AttributingRemoteRunner


class RecordingRunner(DiscoverRunner):  # type: ignore[misc]
    parallel_test_suite = AttributingParallelTestSuite

    def get_resultclass(self) -> type[unittest.TextTestResult]:
        if self.debug_sql or self.pdb:
            raise SystemExit("the peer suites' runner supports neither --debug-sql nor --pdb")
        return RecordingResult
