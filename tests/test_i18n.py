"""Languages (README, "Languages"): every string of the pages marked, every catalog translated, the pages and
the console's own strings shown in the language the agent chose (the chooser's cookie, else the browser's).

The catalogs are compiled by ./scripts/setup (compilemessages); the tests that read translations say so
when the compiled files are missing or older than their sources.
"""

from __future__ import annotations

import ast
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.conf import settings
from django.template.base import Lexer, TokenType
from django.utils import translation

from telephony.console import Refused
from telephony.consumers import language_of
from tests.factories import make_agent

ROOT = Path(settings.BASE_DIR)
TEMPLATES = ROOT / "templates"
LOCALE = ROOT / "locale"
LANGUAGES = ("ru", "fr")
DOMAINS = ("django", "djangojs")
# Names that read the same in every language.
BRAND_WORDS = ("ctihub",)
# Attributes a person reads (or hears, from a screen reader).
READ_ATTRIBUTES = ("aria-label", "placeholder", "title", "alt", "label")
# Blocks whose content is a value, not text (base.html puts {% block page %} in an attribute).
VALUE_BLOCKS = ("page",)
MARK = "\u2063"  # what a marked string or a value becomes in the page the checker reads


# --- every template string marked ----------------------------------------------------------------

def unmarked_strings(source: str) -> list[str]:
    """The text a person would read in ``source`` that is not in {% translate %} or {% blocktranslate %}.

    The template's tokens are put back together with every marked string and every {{ value }} as one
    invisible mark and every other tag dropped, then read as HTML: the text between tags and the attributes
    people read must hold nothing but marks, brand names, digits and punctuation."""
    page, in_blocktranslate, in_comment, in_value = [], False, False, False
    for token in Lexer(source).tokenize():
        if token.token_type == TokenType.COMMENT:
            continue
        contents = token.contents
        if token.token_type == TokenType.BLOCK:
            name = contents.split()[0] if contents else ""
            if name == "comment":
                in_comment = True
            elif name == "endcomment":
                in_comment = False
            elif name in ("blocktranslate", "blocktrans"):
                in_blocktranslate = True
                page.append(MARK)
            elif name in ("endblocktranslate", "endblocktrans"):
                in_blocktranslate = False
            elif name in ("translate", "trans"):
                page.append(MARK)
            elif name == "block" and contents.split()[1:2] and contents.split()[1] in VALUE_BLOCKS:
                in_value = True
            elif name == "endblock":
                in_value = False
            continue
        if in_comment or in_blocktranslate or in_value:
            continue
        page.append(MARK if token.token_type == TokenType.VAR else contents)
    reader = _ReadText()
    reader.feed("".join(page))
    reader.close()
    return [text for text in reader.read if _has_words(text)]


def _has_words(text: str) -> bool:
    for word in BRAND_WORDS:
        text = text.replace(word, "")
    return re.search(r"[^\W\d_]", text) is not None


class _ReadText(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.read: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        self.read += [value for name, value in attrs if name in READ_ATTRIBUTES and value]

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip and data.strip():
            self.read.append(data.strip())


def templates() -> list[str]:
    found = [p for p in TEMPLATES.rglob("*.html")]
    found += [p for p in ROOT.glob("*/templates/**/*.html") if ".venv" not in p.parts]
    return sorted(p.relative_to(ROOT).as_posix() for p in found)


@pytest.mark.parametrize("template", templates())
def test_it_marks_every_string_of_every_template_for_translation(template):
    assert unmarked_strings((ROOT / template).read_text()) == [], (
        f"{template}: wrap these in {{% translate %}} or {{% blocktranslate %}} (README, Languages)")


def test_it_finds_the_unmarked_strings_of_a_template():
    source = """{% load i18n %}{# a comment #}{% block page %}console{% endblock %}<h1>Live calls</h1><p>{% translate "Marked" %} · ctihub</p>
        <nav aria-label="Main"></nav><input placeholder="{% translate 'Number' %}">{% comment %}Notes{% endcomment %}
        <p>{% blocktranslate %}Hello {{ name }}{% endblocktranslate %}</p><span title="{{ value }}">{{ n }} ringing</span>
        <option value="x" {% if on %}selected{% endif %}>{{ label }}</option><b>12:00 — 3</b>"""
    assert unmarked_strings(source) == ["Live calls", "Main", f"{MARK} ringing"]


# --- every catalog translated ------------------------------------------------------------------------

def catalog(language: str, domain: str) -> list[dict]:
    """The entries of a .po file (header left out): flags, msgctxt, msgid, msgid_plural and msgstr(s)."""
    entries = []
    for block in (LOCALE / language / "LC_MESSAGES" / f"{domain}.po").read_text().split("\n\n"):
        entry, field = {"flags": [], "msgstr": {}}, None
        for line in block.strip().splitlines():
            if line.startswith("#,"):
                entry["flags"] += [flag.strip() for flag in line[2:].split(",")]
            elif line.startswith("#"):
                continue
            elif match := re.match(r"^(msgctxt|msgid_plural|msgid|msgstr(?:\[(\d+)\])?) (\".*\")$", line):
                name, index, text = match.group(1), match.group(2), ast.literal_eval(match.group(3))
                if name.startswith("msgstr"):
                    field = ("msgstr", index or "0")
                    entry["msgstr"][field[1]] = text
                else:
                    field = name
                    entry[name] = text
            elif line.startswith('"') and field is not None:
                text = ast.literal_eval(line)
                if isinstance(field, tuple):
                    entry["msgstr"][field[1]] += text
                else:
                    entry[field] += text
        if entry.get("msgid"):
            entries.append(entry)
    return entries


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("domain", DOMAINS)
def test_it_translates_every_string_of_every_catalog(language, domain):
    entries = catalog(language, domain)
    assert entries, f"{language}/{domain}.po is empty"
    untranslated = [e["msgid"] for e in entries if not all(e["msgstr"].values()) or not e["msgstr"]]
    fuzzy = [e["msgid"] for e in entries if "fuzzy" in e["flags"]]
    # The values a string names (%(name)s) must all be in its translation, and no other.
    placeholders = [e["msgid"] for e in entries for text in e["msgstr"].values()
                    if set(re.findall(r"%\((\w+)\)s", text)) != set(re.findall(r"%\((\w+)\)s", e["msgid"]))]
    assert (untranslated, fuzzy, placeholders) == ([], [], []), (
        f"{language}/{domain}.po: translate these (README, Languages)")


@pytest.fixture
def compiled():
    stale = [str(po.relative_to(ROOT)) for po in LOCALE.rglob("*.po")
             if not po.with_suffix(".mo").exists() or po.with_suffix(".mo").stat().st_mtime < po.stat().st_mtime]
    if stale:
        pytest.fail(f"not compiled: {stale}; run ./scripts/setup (it runs compilemessages)")


# --- the pages in the language chosen -----------------------------------------------------------------

@pytest.mark.django_db
def test_it_shows_the_console_in_the_browsers_language_or_the_one_chosen(client, compiled):
    agent = make_agent("olga")
    client.force_login(agent.user)

    english = client.get("/").content.decode()
    assert '<html lang="en">' in english and "Live calls" in english

    russian = client.get("/", HTTP_ACCEPT_LANGUAGE="ru-RU,ru;q=0.9,en;q=0.5").content.decode()
    assert '<html lang="ru">' in russian
    assert "Текущие вызовы" in russian and "Голосовая почта" in russian and "Свободен" in russian
    assert "Live calls" not in russian

    # The chooser: Django's set_language remembers the choice in its cookie, over the browser's language.
    answer = client.post("/i18n/setlang/", {"language": "fr", "next": "/"}, HTTP_ACCEPT_LANGUAGE="ru")
    assert answer.status_code == 302 and answer.cookies[settings.LANGUAGE_COOKIE_NAME].value == "fr"
    french = client.get("/", HTTP_ACCEPT_LANGUAGE="ru").content.decode()
    assert '<html lang="fr">' in french
    assert "Appels en cours" in french and "Messagerie vocale" in french and "Disponible" in french
    # The status's value stays the code the console sends; only its label is translated.
    assert '<option value="free"' in french


@pytest.mark.django_db
def test_it_translates_the_login_page_and_the_javascript_strings(client, compiled):
    login = client.get("/login/", HTTP_ACCEPT_LANGUAGE="fr").content.decode()
    assert "Se connecter" in login and "Mot de passe" in login and 'id="language-select"' in login

    catalog_js = client.get("/jsi18n/", HTTP_ACCEPT_LANGUAGE="ru").content.decode()
    assert "\\u0417\\u0432\\u043e\\u043d\\u0438\\u0442" in catalog_js or "Звонит" in catalog_js  # "Ringing"
    english_js = client.get("/jsi18n/", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Звонит" not in english_js and "\\u0417\\u0432\\u043e\\u043d\\u0438\\u0442" not in english_js


@pytest.mark.django_db
def test_it_lets_the_browser_keep_the_javascript_strings_and_never_in_the_wrong_language(client, compiled):
    russian = client.get("/jsi18n/", HTTP_ACCEPT_LANGUAGE="ru")
    etag = russian["ETag"]
    assert "no-cache" in russian["Cache-Control"] and etag
    # Asked again with what it kept: nothing to send.
    again = client.get("/jsi18n/", HTTP_ACCEPT_LANGUAGE="ru", HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304 and again["ETag"] == etag and not again.content
    # The same script kept, but the page is now French (the chooser's cookie over the browser's language):
    # the French script, whole, not a 304 that would leave the Russian strings in a French page.
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "fr"
    french = client.get("/jsi18n/", HTTP_ACCEPT_LANGUAGE="ru", HTTP_IF_NONE_MATCH=etag)
    assert french.status_code == 200 and french["ETag"] != etag
    assert french.content.decode() != russian.content.decode() and "Sonne" in french.content.decode()


def test_it_answers_a_console_in_the_language_of_its_page(compiled):
    def scope(cookie=None, accept=None):
        return {"cookies": {settings.LANGUAGE_COOKIE_NAME: cookie} if cookie else {},
                "headers": [(b"accept-language", accept.encode())] if accept else []}

    assert language_of(scope(cookie="fr", accept="ru")) == "fr"
    assert language_of(scope(accept="de-DE,ru;q=0.8")) == "ru"
    assert language_of(scope(cookie="xx", accept="de")) == settings.LANGUAGE_CODE
    from django.utils.translation import gettext_lazy

    refusal = Refused(gettext_lazy("enter a phone number or an extension"))
    with translation.override("fr"):
        assert str(refusal) == "saisissez un numéro de téléphone ou un poste"
    with translation.override("ru"):
        assert str(refusal) == "введите номер телефона или добавочный"
    assert str(refusal) == "enter a phone number or an extension"


@pytest.mark.django_db
def test_it_shows_the_admin_in_russian_and_french(admin_client, compiled):
    from django.urls import reverse

    from tests.factories import make_account, make_call, make_terminal

    account = make_account(status="failed", last_error="HTTP 401")
    agent = make_agent("olga")
    make_terminal(account, agent=agent)
    make_call(account, agent=agent)
    pages = [reverse("admin:index"), reverse("admin:telephony_pbxaccount_changelist"),
             reverse("admin:telephony_pbxaccount_change", args=[account.pk]), reverse("admin:telephony_call_changelist"),
             reverse("admin:accounts_agent_change", args=[agent.pk]), reverse("admin:crm_sync_retailcrmintegration_add")]
    for language, words in {"ru": ("Учётные записи АТС", "Сбой (нужен администратор)", "Проверить подключение"),
                            "fr": ("Comptes PBX", "En échec (un administrateur doit intervenir)", "Tester la connexion")}.items():
        seen = ""
        for url in pages:
            response = admin_client.get(url, HTTP_ACCEPT_LANGUAGE=language)
            assert response.status_code == 200, (language, url)
            seen += response.content.decode()
        assert all(word in seen for word in words), (language, [w for w in words if w not in seen])


@pytest.mark.django_db
def test_it_translates_the_errors_raised_before_the_language_is_known(compiled):
    """Refusals raised in a worker thread or a provider (no language active there) stay lazy: the console and
    the admin make them text in the agent's or the admin's language."""
    from django.core.exceptions import ValidationError

    from crm_sync.models import check_time_zone
    from telephony.console import Viewer, change_status
    from telephony.providers import registry
    from telephony.providers.base import ActionRefused
    from telephony.providers.telepo.transport import TelepoProvider
    from tests.factories import make_account

    agent = make_agent("olga", extension_code="")
    with pytest.raises(Refused) as status:
        change_status(Viewer(agent.user, agent), "lunch")
    telepo = TelepoProvider(make_account(kind="telepo", base_url="https://telepo.example", enterprise="acme.org"))
    with pytest.raises(ActionRefused) as number:
        telepo.tel_uri("the shop")
    with pytest.raises(ValidationError) as zone:
        check_time_zone("Moscow")
    label = dict(registry.kind_choices())["istra_myrcc"]

    def shown():
        return [str(status.value), str(number.value), " ".join(zone.value.messages), str(agent), str(label)]

    with translation.override("ru"):
        assert shown() == ["неизвестный статус 'lunch'; ожидается один из: free, busy, dinner, break",
                           "'the shop' — не номер телефона и не URI tel: или sip:",
                           "'Moscow' — не название часового пояса (например, Europe/Moscow)",
                           "olga (нет кода)", "Istra myRCC (управление вызовами предприятия)"]
    with translation.override("fr"):
        assert shown() == ["statut inconnu 'lunch' ; valeurs attendues : free, busy, dinner, break",
                           "'the shop' n'est ni un numéro de téléphone, ni une URI tel: ou sip:",
                           "'Moscow' n'est pas un nom de fuseau horaire (par exemple Europe/Moscow)",
                           "olga (pas de code)", "Istra myRCC (contrôle des appels de l'entreprise)"]
    assert str(status.value) == "unknown status 'lunch'; expected one of free, busy, dinner, break"
