"""The README's settings table and check table follow the code."""

from __future__ import annotations

import re
from pathlib import Path

from django_resilient_sessions import checks
from django_resilient_sessions.conf import DEFAULTS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_documented_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| `([^`]*)` \|", README, flags=re.MULTILINE))
    assert set(rows) == set(DEFAULTS)
    for key, default in DEFAULTS.items():
        assert rows[key] == repr(default).replace("'", '"'), key


def test_every_check_id_is_documented() -> None:
    source = Path(checks.__file__).read_text()
    in_code = set(re.findall(r'ID \+ "([EW]\d{3})"', source))
    in_readme = set(re.findall(r"`django_resilient_sessions\.([EW]\d{3})`", README))
    assert in_code == in_readme
