"""The chaos run's timeline chart (``chaos/timeline.py``), drawn from a made-up run.

The fault windows come from the phase starts and "healed" marks the runner records; the
chart is a PNG of the four panels. (The short chaos run in ``test_chaos_short.py`` draws
one from a real run.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos import timeline
from chaos.stats import Recorder, Sample

pytest.importorskip("matplotlib")


def made_up_run() -> tuple[Recorder, float]:
    recorder = Recorder()
    t0 = 1000.0
    recorder.timeline = [
        ("startup (first logins)", t0),
        ("baseline", t0 + 2),
        ("redis killed", t0 + 5),
        ("healed", t0 + 9),
        ("FLUSHALL", t0 + 12),
        ("healed", t0 + 12.5),
        ("final check (Redis up)", t0 + 16),
    ]
    for i in range(400):
        start = t0 + i * 0.05
        down = t0 + 5 <= start < t0 + 9
        recorder.samples.append(
            Sample(
                phase="x",
                kind="state",
                start=start,
                end=start + (0.2 if down else 0.01),
                status=200,
                server_ms=1.0,
                waited=0,
                pid=1 + i % 2,
                source="backup" if down else "cache",
                breaker="open" if down else "closed",
            )
        )
    return recorder, t0


def test_fault_windows_from_phases_and_heal_marks() -> None:
    recorder, t0 = made_up_run()
    assert timeline.windows(recorder, t0) == [
        timeline.Window("redis killed", 5.0, 9.0, 12.0),
        timeline.Window("FLUSHALL", 12.0, 12.5, 16.0),
    ]


def test_the_chart_is_written(tmp_path: Path) -> None:
    recorder, _ = made_up_run()
    path = timeline.write(recorder, tmp_path / "deep" / "timeline.png", title="made up")
    assert path == tmp_path / "deep" / "timeline.png"
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1650, 1100)


def test_no_samples_no_chart(tmp_path: Path) -> None:
    assert timeline.write(Recorder(), tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
