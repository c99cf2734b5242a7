"""Translations: the shipped catalogs, and the pages, admin and messages in other languages.

The site here runs Django's ``LocaleMiddleware`` (after the engine's ``SessionMiddleware``, as
Django documents) and each client asks for its language with ``Accept-Language``.  Covered:

- the catalogs (en, zh_Hans, fr, de): every message of fr, de and zh_Hans translated, none
  fuzzy, the same ``%(name)s`` placeholders as the English, the committed ``.mo`` files
  holding exactly what the ``.po`` files say, and (with GNU gettext installed) no string
  marked in the code or templates missing from them;
- the "your sessions" page in French and in Chinese (headings, "this device", the
  "ago" column, the buttons, the message after signing out a device), English unchanged;
- the refusal pages in German: a login past the ``refuse`` limit (403) and a login the
  ledger cannot record (503), page and JSON;
- the admin changelist in German (status texts, filter, action) and
  ``SessionLimitExceeded``'s message in the active language.
"""

from __future__ import annotations

import ast
import gettext as gnu_gettext
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client, override_settings
from django.utils import translation

import django_resilient_sessions
from django_resilient_sessions.exceptions import SessionLimitExceeded
from django_resilient_sessions.models import UserSession
from tests.web import PASSWORD, make_user, usersession_table_unavailable

PACKAGE = Path(django_resilient_sessions.__file__).resolve().parent
LOCALE = PACKAGE / "locale"
LANGUAGES = ("en", "zh_Hans", "fr", "de")
TRANSLATED = ("zh_Hans", "fr", "de")
LIST_URL = "/account/sessions/"
CHANGELIST = "/admin/django_resilient_sessions/usersession/"
PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]")


# The catalogs ------------------------------------------------------------------------------

Entry = dict[str, Any]


def read_po(path: Path) -> list[Entry]:
    """The entries of a .po file (header included): msgctxt, msgid, msgid_plural, msgstr..."""
    entries: list[Entry] = []
    for block in path.read_text(encoding="utf-8").strip().split("\n\n"):
        entry: Entry = {"flags": set()}
        field = ""
        for line in block.splitlines():
            if line.startswith("#,"):
                entry["flags"].update(flag.strip() for flag in line[2:].split(","))
            elif line.startswith("#"):
                continue
            elif line.startswith('"'):
                entry[field] += ast.literal_eval(line)
            else:
                field, _, value = line.partition(" ")
                entry[field] = ast.literal_eval(value)
        entries.append(entry)
    return entries


def messages_of(language: str) -> list[Entry]:
    entries = read_po(LOCALE / language / "LC_MESSAGES" / "django.po")
    assert entries[0]["msgid"] == "", "the first entry is the header"
    return entries[1:]


def translations_of(entry: Entry) -> list[str]:
    return [value for key, value in sorted(entry.items()) if key.startswith("msgstr")]


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_catalog_is_shipped_compiled_and_clean(language: str) -> None:
    directory = LOCALE / language / "LC_MESSAGES"
    header = read_po(directory / "django.po")[0]
    assert "fuzzy" not in header["flags"]  # msgfmt would drop a fuzzy header (plural forms)
    assert f"Language: {language}\n" in header["msgstr"]
    assert (directory / "django.mo").is_file()
    messages = messages_of(language)
    assert len(messages) >= 50
    assert {msg["msgid"] for msg in messages} == {msg["msgid"] for msg in messages_of("en")}
    for entry in messages:
        assert "fuzzy" not in entry["flags"], entry["msgid"]


@pytest.mark.parametrize("language", TRANSLATED)
def test_every_message_is_translated_with_its_placeholders(language: str) -> None:
    for entry in messages_of(language):
        values = translations_of(entry)
        assert values and all(values), f"{language}: {entry['msgid']!r} is not translated"
        wanted = set(PLACEHOLDER.findall(entry["msgid"]))
        for value in values:
            assert set(PLACEHOLDER.findall(value)) == wanted, (language, entry["msgid"], value)


@pytest.mark.parametrize("language", TRANSLATED)
def test_the_committed_mo_files_hold_what_the_po_files_say(language: str) -> None:
    directory = LOCALE / language / "LC_MESSAGES"
    with (directory / "django.mo").open("rb") as mo:
        compiled = gnu_gettext.GNUTranslations(mo)
    for entry in messages_of(language):
        context = entry.get("msgctxt")
        if "msgid_plural" in entry:
            for n, form in ((1, "msgstr[0]"), (2, "msgstr[1]" if language != "zh_Hans" else "")):
                expected = entry[form or "msgstr[0]"]
                assert compiled.ngettext(entry["msgid"], entry["msgid_plural"], n) == expected
        elif context is not None:
            assert compiled.pgettext(context, entry["msgid"]) == entry["msgstr"]
        else:
            assert compiled.gettext(entry["msgid"]) == entry["msgstr"], entry["msgid"]


@pytest.mark.skipif(shutil.which("xgettext") is None, reason="GNU gettext is not installed")
def test_every_marked_string_is_in_the_catalogs(tmp_path: Path) -> None:
    """What ``makemessages`` extracts from the code today is what the catalogs hold."""
    copy = tmp_path / "django_resilient_sessions"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "locale"))
    (copy / "locale").mkdir()
    # -I: the package's directory is the working directory, and its typing.py must not
    # stand in for the standard library's; no settings are needed to extract strings.
    command = [sys.executable, "-I", "-m", "django", "makemessages", "-l", "en"]
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    subprocess.run(
        [*command, "--ignore", "migrations/*"], cwd=copy, env=env, check=True, capture_output=True
    )
    fresh = read_po(copy / "locale" / "en" / "LC_MESSAGES" / "django.po")[1:]
    extracted = {(entry.get("msgctxt"), entry["msgid"]) for entry in fresh}
    shipped = {(entry.get("msgctxt"), entry["msgid"]) for entry in messages_of("en")}
    assert extracted == shipped, "run `make messages` and translate the new strings"


# Pages in other languages ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def locale_middleware() -> Iterator[None]:
    """The site runs LocaleMiddleware right after the session middleware (Django's advice)."""
    middleware = list(settings.MIDDLEWARE)
    at = middleware.index("django_resilient_sessions.middleware.SessionMiddleware") + 1
    middleware.insert(at, "django.middleware.locale.LocaleMiddleware")
    try:
        with override_settings(MIDDLEWARE=middleware):
            yield
    finally:
        translation.deactivate()  # LocaleMiddleware leaves the last language active


def browser(language: str) -> Client:
    return Client(headers={"accept-language": language})


def log_in(client: Client, username: str = "alice") -> None:
    response = client.post("/login/", {"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.content


@pytest.mark.django_db
def test_the_sessions_page_in_french() -> None:
    make_user()
    me, phone = browser("fr-FR,fr;q=0.9"), browser("fr")
    log_in(me)
    log_in(phone)
    html = me.get(LIST_URL).content.decode()
    assert '<html lang="fr">' in html
    for text in (
        "<title>Vos sessions</title>",
        "<h1>Vos sessions</h1>",
        "<th>Appareil</th>",
        "<th>Navigateur</th>",
        "<th>Dernière activité</th>",
        "(cet appareil)",
        "il y a ",
        ">Déconnecter<",
        "Déconnecter tous les autres appareils",
    ):
        assert text in html, text
    assert "Your sessions" not in html and "(this device)" not in html

    response = me.post("/account/sessions/revoke-others/", follow=True)
    assert "1 autre session déconnectée." in response.content.decode()


@pytest.mark.django_db
def test_the_sessions_page_in_chinese() -> None:
    make_user()
    me = browser("zh-hans")
    log_in(me)
    html = me.get(LIST_URL).content.decode()
    assert '<html lang="zh-hans">' in html
    for text in ("<h1>您的会话</h1>", "<th>设备</th>", "（本设备）", "前</time>", ">退出登录<"):
        assert text in html, text
    assert "在所有其他设备上退出登录" not in html  # no other device
    response = me.post("/account/sessions/revoke-others/", follow=True)
    assert "已在 0 个其他会话中退出登录。" in response.content.decode()


@pytest.mark.django_db
def test_the_sessions_page_stays_english_by_default() -> None:
    make_user()
    me = Client()
    log_in(me)
    html = me.get(LIST_URL).content.decode()
    assert '<html lang="en">' in html
    assert "<h1>Your sessions</h1>" in html and "(this device)" in html and " ago</time>" in html


@pytest.mark.django_db
def test_the_session_limit_refusal_in_german() -> None:
    make_user()
    log_in(browser("de"))
    options = {"MAX_SESSIONS_PER_USER": 1, "SESSION_LIMIT_POLICY": "refuse"}
    with override_settings(RESILIENT_SESSIONS=options):
        page = browser("de").post("/login/", {"username": "alice", "password": PASSWORD})
        data = browser("de").post(
            "/login/", {"username": "alice", "password": PASSWORD}, HTTP_ACCEPT="application/json"
        )
    assert page.status_code == 403
    html = page.content.decode()
    assert '<html lang="de">' in html
    assert "<title>Zu viele aktive Sitzungen</title>" in html
    assert "Melden Sie sich auf einem anderen Gerät ab und danach erneut an." in html
    assert data.status_code == 403
    assert data.json()["error"] == "session_limit"
    assert data.json()["message"].startswith("Für dieses Konto sind bereits so viele Sitzungen")


@pytest.mark.django_db(transaction=True)  # PostgreSQL: the failed statement ends a transaction
def test_the_ledger_refusal_in_german() -> None:
    make_user()
    with usersession_table_unavailable():
        page = browser("de").post("/login/", {"username": "alice", "password": PASSWORD})
    assert page.status_code == 503
    html = page.content.decode()
    assert "<h1>Bitte versuchen Sie es gleich noch einmal</h1>" in html
    assert "daher wurde nichts geändert." in html


@pytest.mark.django_db
def test_the_admin_in_german() -> None:
    make_user()
    alice = Client()
    log_in(alice)
    UserSession.objects.get().revoke()
    admin = browser("de")
    get_user_model().objects.create_superuser("root", password=PASSWORD)
    log_in(admin, "root")
    html = admin.get(CHANGELIST).content.decode()
    for text in (
        "Benutzersitzungen",  # the model's verbose name
        "Ausfallsichere Sitzungen",  # the app's
        "beendet (widerrufen)",  # alice's status
        ">aktiv<",  # root's own
        "beendet oder abgelaufen",  # the status filter
        "Ausgewählte Sitzungen widerrufen",  # the action
        "Letzte Aktivität",  # a column
    ):
        assert text in html, text


def test_the_session_limit_message_follows_the_active_language() -> None:
    error = SessionLimitExceeded()
    with translation.override("fr"):
        assert str(error).startswith("Ce compte a déjà atteint le nombre maximal")
    with translation.override("zh-hans"):
        assert str(error) == "此账户的活动会话数已达上限。请先在其他设备上退出登录，然后重新登录。"
    with translation.override("en"):
        assert str(error).startswith("This account already has the most active sessions")
    assert str(SessionLimitExceeded("custom")) == "custom"


def test_device_types_are_named_in_the_active_language() -> None:
    row = UserSession(device_type="mobile")
    with translation.override("de"):
        assert row.device_type_label == "Mobilgerät"
    with translation.override("fr"):
        assert UserSession(device_type="tablet").device_type_label == "tablette"
    assert UserSession(device_type="").device_type_label == ""
