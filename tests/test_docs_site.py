"""The documentation site (docs/, built by ``make docs``) follows the code.

- ``docs/configuration.md`` describes every key of ``conf.DEFAULTS``, once, in order, with
  a type its default fits; the defaults it shows are generated from ``DEFAULTS``
  (``docs/_ext/settings_reference.py``, which the Sphinx extension renders with), and they
  read back as the very values in the code;
- where prose quotes a default next to a setting, ``{setting}`KEY` (N s)``, N is the default;
- every system check ID in ``checks.py`` is in the docs' table of checks, and nothing else;
- every signal and health counter is in the operations page's tables;
- the README renders on PyPI: no relative links or images.

- the README leads with ``pip install``, then the settings (the three cache backends),
  then outages, security and limits;
- the supported versions stated in the README and the quick start are ``noxfile.py``'s
  matrix, exactly.

No Sphinx needed: these run in every test venv (each nox session's included).
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from django_resilient_sessions import checks
from django_resilient_sessions.conf import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"


def _load_reference() -> ModuleType:
    name = "drs_docs_settings_reference"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, DOCS / "_ext" / "settings_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


reference = _load_reference()


def pages() -> dict[str, str]:
    """Every Markdown page of the site, by path under docs/ (the build output left out)."""
    return {
        str(path.relative_to(DOCS)): path.read_text(encoding="utf-8")
        for path in sorted(DOCS.rglob("*.md"))
        if "_build" not in path.relative_to(DOCS).parts
    }


# -- the configuration reference --------------------------------------------------------


def test_every_setting_is_described_once_in_the_order_of_defaults() -> None:
    entries = reference.read_page(CONFIGURATION)
    assert [entry.key for entry in entries] == list(DEFAULTS)


def test_the_configuration_page_has_no_problem() -> None:
    entries = reference.read_page(CONFIGURATION)
    assert reference.problems(entries, DEFAULTS) == []
    for entry in entries:
        assert entry.description.strip(), entry.key
        assert reference.conforms(DEFAULTS[entry.key], entry.type), entry.key


@pytest.mark.parametrize("key", list(DEFAULTS))
def test_the_default_shown_is_the_default_in_the_code(key: str) -> None:
    shown = reference.default_literal(DEFAULTS[key])
    value = ast.literal_eval(shown)
    assert value == DEFAULTS[key]
    assert type(value) is type(DEFAULTS[key])


def test_the_page_writes_no_default_by_hand() -> None:
    """Defaults come from the code: the block has no "default" of its own to drift."""
    block = "\n".join(reference.block_of(CONFIGURATION.read_text(encoding="utf-8")))
    assert not re.search(r"^\s*:?default:", block, flags=re.MULTILINE | re.IGNORECASE)
    assert "resilient-settings" in CONFIGURATION.read_text(encoding="utf-8")


def test_a_missing_extra_or_mistyped_setting_is_a_problem() -> None:
    """The guard the build relies on catches each kind of drift."""
    entries = reference.read_page(CONFIGURATION)
    first, *rest = entries
    assert reference.problems(rest, DEFAULTS)  # a key missing
    extra = reference.Entry("NOT_A_SETTING", "int", "Gone.", 0)
    assert reference.problems([*entries, extra], DEFAULTS)  # a key that is not a setting
    assert reference.problems([*entries, first], DEFAULTS)  # described twice
    assert reference.problems([*rest, first], DEFAULTS)  # out of order
    wrong = reference.Entry(first.key, "bool", first.description, first.line)
    assert reference.problems([wrong, *rest], DEFAULTS)  # a type its default does not fit
    blank = reference.Entry(first.key, first.type, "", first.line)
    assert reference.problems([blank, *rest], DEFAULTS)  # no description


@pytest.mark.parametrize(
    ("value", "type_text", "fits"),
    [
        (True, "bool", True),
        (True, "int", False),
        (1, "bool", False),
        (60, "float | None", True),
        (None, "float | None", True),
        ("x", "float | None", False),
        ([], "list[str]", True),
        (["a", 1], "list[str]", False),
        ("refuse", '"evict_oldest" | "refuse"', True),
        ("other", '"evict_oldest" | "refuse"', False),
    ],
)
def test_types_are_checked_against_values(value: object, type_text: str, fits: bool) -> None:
    assert reference.conforms(value, type_text) is fits


def test_the_block_format_is_strict() -> None:
    with pytest.raises(reference.SourceError):
        reference.parse(["KEY: int", "not indented"])
    with pytest.raises(reference.SourceError):
        reference.parse(["  a description before any key"])
    parsed = reference.parse(["A: int", "  One.", "", "  Two.", "B: str", "  Three."])
    assert [(e.key, e.type, e.description) for e in parsed] == [
        ("A", "int", "One.\n\nTwo."),
        ("B", "str", "Three."),
    ]


_QUOTED = re.compile(r"\{setting\}`([A-Z_]+)`\s*\(?(\d+(?:\.\d+)?)\s*(ms|s)\b")


def test_defaults_quoted_in_prose_are_the_defaults() -> None:
    found = 0
    for name, text in pages().items():
        for key, number, unit in _QUOTED.findall(text):
            seconds = float(number) / (1000 if unit == "ms" else 1)
            assert key in DEFAULTS, f"{name}: {key}"
            assert seconds == pytest.approx(DEFAULTS[key]), f"{name}: {key} {number} {unit}"
            found += 1
    assert found, "the pattern finds nothing: has the way defaults are quoted changed?"


# -- the system checks --------------------------------------------------------------------


def check_ids_in_code() -> set[str]:
    source = Path(checks.__file__).read_text(encoding="utf-8")
    return set(re.findall(r'ID \+ "([EW]\d{3})"', source))


def test_every_check_id_is_in_the_docs_table() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    in_table = set(re.findall(r"^\| `django_resilient_sessions\.([EW]\d{3})` \|", text, re.M))
    assert in_table == check_ids_in_code()


def test_no_page_names_a_check_that_does_not_exist() -> None:
    known = check_ids_in_code()
    for name, text in pages().items():
        named = set(re.findall(r"django_resilient_sessions\.([EW]\d{3})\b", text))
        named |= set(re.findall(r"\bchecks? ([EW]\d{3})\b", text, flags=re.IGNORECASE))
        assert named <= known, f"{name}: {sorted(named - known)}"


# -- signals and counters -----------------------------------------------------------------


def test_every_signal_and_counter_is_in_the_operations_page() -> None:
    from django_resilient_sessions import health, signals

    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `(\w+)`", text, flags=re.MULTILINE))
    rows |= set(re.findall(r"^\| `\w+`, `(\w+)`", text, flags=re.MULTILINE))
    rows |= set(re.findall(r"^\| `\w+`, `\w+`, `(\w+)`", text, flags=re.MULTILINE))
    assert set(signals.__all__) <= rows
    assert set(health.COUNTERS) <= rows


# -- the README on PyPI -------------------------------------------------------------------


def test_the_readme_has_no_relative_links_or_images() -> None:
    """PyPI renders the README without the repository: relative targets are broken there."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)", readme)
    targets += re.findall(r"^\[[^\]]+\]:\s*(\S+)", readme, flags=re.MULTILINE)
    targets += re.findall(r"<img[^>]+src=\"([^\"]+)\"", readme)
    relative = [t for t in targets if not re.match(r"(https?://|mailto:|#)", t)]
    assert relative == []


def test_the_readme_links_to_the_documentation() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    site = "https://django-resilient-sessions.readthedocs.io/en/latest/"
    for page in re.findall(re.escape(site) + r"([\w-]+)\.html", readme):
        assert (DOCS / f"{page}.md").exists(), page
    assert site + "benchmarks.html" in readme


def test_the_readme_leads_with_pip_install_then_settings_outages_and_security() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", readme, flags=re.MULTILINE)
    assert headings[:5] == [
        "Installation",
        "Settings",
        "What happens during an outage",
        "Security model",
        "In your code and your tests",
    ]
    first_block = re.search(r"```sh\n(.*?)```", readme, flags=re.DOTALL)
    assert first_block is not None
    assert first_block[1].strip() == "python -m pip install django-resilient-sessions"
    settings = readme[readme.index("## Settings") : readme.index("## What happens")]
    for backend in (
        "django_redis.cache.RedisCache",
        "django.core.cache.backends.redis.RedisCache",
        "django_resilient_sessions.cache.RedisClusterCache",
    ):
        assert f'"BACKEND": "{backend}"' in settings, backend
    assert "### Limits" in readme[readme.index("## Security model") :]


def noxfile_matrix() -> dict[str, tuple[str, ...]]:
    """``noxfile.MATRIX`` (Django line -> Pythons), read without running the noxfile."""
    tree = ast.parse((ROOT / "noxfile.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "MATRIX":
            assert node.value is not None
            matrix: dict[str, tuple[str, ...]] = ast.literal_eval(node.value)
            return matrix
    raise AssertionError("no MATRIX in noxfile.py")


@pytest.mark.parametrize("document", ["README.md", "docs/quickstart.md"])
def test_the_supported_versions_stated_are_the_tested_matrix(document: str) -> None:
    text = (ROOT / document).read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+\.\d+)(?: LTS)? \| ([\d., ]+) \|$", text, flags=re.MULTILINE)
    stated = {django: tuple(p.strip() for p in pythons.split(",")) for django, pythons in rows}
    assert stated == noxfile_matrix()
    assert "4.2 LTS" not in text
