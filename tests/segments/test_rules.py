"""The per-row rules on constructed text, then on every document of jobs/data/web_sample.jsonl."""

import json

import pytest
from pydantic import ValidationError

from backtrans.config import SegmentsConfig
from backtrans.segments.rules import (
    ROW_REASONS,
    Boilerplate,
    Empty,
    Length,
    Repetitive,
    RowRules,
    Uppercase,
    boilerplate_reason,
    repetition,
    uppercase_ratio,
)
from tests.segments.data import CATEGORY_OF, OTHER, PROSE, SAMPLE


def test_config_is_strict():
    with pytest.raises(ValidationError, match="extra"):
        SegmentsConfig(min_char=10)
    with pytest.raises(ValidationError, match="min_chars"):
        SegmentsConfig(min_chars=4000)
    assert SegmentsConfig().model_dump()["near_dup_threshold"] == 0.8


def test_the_rules_from_the_config_give_the_reasons_in_rule_order():
    rules = RowRules.from_config(SegmentsConfig(min_chars=10, max_chars=20, max_uppercase_ratio=0.7))
    assert tuple(reason for rule in rules.rules for reason in rule.reasons) == ROW_REASONS
    assert rules.rules[1] == Length(10, 20) and rules.rules[2] == Uppercase(0.7)
    without = RowRules.from_config(SegmentsConfig(boilerplate=False))
    assert [type(rule) for rule in without.rules] == [Empty, Length, Uppercase, Repetitive]


def test_empty():
    for text in (None, "", "   ", "\n\t \n"):
        assert Empty()(text) == "empty"
        assert RowRules.from_config(SegmentsConfig()).reason(text) == "empty"
    assert Empty()(" x ") is None


def test_length_bounds_are_inclusive():
    paper = Length(600, 3000)
    assert paper("a" * 599) == "too_short"
    assert paper("a" * 600) is None
    assert paper("a" * 3000) is None
    assert paper("a" * 3001) == "too_long"
    assert Length(10, 100)("a" * 50) is None


def test_uppercase():
    shouting = PROSE.upper()
    assert uppercase_ratio(shouting) == 1.0
    assert Uppercase(0.5)(shouting) == "uppercase"
    acronyms = PROSE + " NASA, HTML, CSS, USB, GPU and the EU are acronyms, IMPORTANT: so is NATO."
    assert Uppercase(0.5)(acronyms) is None
    assert uppercase_ratio("ÉCOLE ÜBER ALLES") == 1.0  # non-ASCII letters count too
    assert uppercase_ratio("école über alles") == 0.0
    assert uppercase_ratio("漢字とかな 12345") == 0.0  # no cased letters: never "all caps"
    assert Uppercase(0.4)("AAAA bbbb") == "uppercase" and Uppercase(0.5)("AAAA bbbb") is None


def test_boilerplate_catches_navigation_cookies_and_link_lists():
    nav = "Home | About | Contact | Advertisement | Forum | Quick Links | Free Newsletter\n" + PROSE
    assert boilerplate_reason(nav) == "nav_header"
    assert Boilerplate()(nav) == "boilerplate"
    assert boilerplate_reason(PROSE + "\n\nAdvertisement\n\n" + PROSE) == "nav_header"
    assert boilerplate_reason("QUICK LINKS:\n" + PROSE) == "nav_header"
    assert boilerplate_reason("Forum Index » General Discussion » Off Topic\n" + PROSE) == "nav_header"
    banner = "This site uses cookies to give you a great experience. By using this site you accept them. [Got it!]"
    assert boilerplate_reason(PROSE + "\n" + banner) == "cookie_banner"
    sitemap = "Sitemap\n\nMain\n- Home\n- About Us\n- Careers\n- Contact\nServices\n- Consulting\n- Training\n- FAQ"
    assert boilerplate_reason(sitemap) == "link_heavy"
    menus = "\n".join(["News | Sport | Weather | Business", "Share | Print | Email", "Terms | Privacy | Sitemap"] * 2)
    assert boilerplate_reason(menus + "\n" + "A short caption.") == "link_heavy"


def test_boilerplate_keeps_content_that_mentions_the_same_words():
    prose = (
        "I asked on another forum and someone suggested a reset. Subscribe to the free newsletter if you like.\n"
        "The advertisement industry spends heavily on quick link previews. " + PROSE
    )
    assert boilerplate_reason(prose) is None
    assert Boilerplate()(prose) is None
    table = "| flour | water | salt |\n|---|---|---|\n| 500 g | 350 g | 10 g |\n| 1 kg | 700 g | 20 g |\n" + PROSE
    assert boilerplate_reason(table) is None
    shell = "Find every text file:\n\nfind . -name '*.txt' -print0 | xargs -0 grep -l TODO | sort\n" + PROSE
    assert boilerplate_reason(shell) is None
    recipe = (
        "Ingredients\n- 500 g flour\n- 350 g water\n- 10 g salt\n- 100 g starter\n- Olive oil for the tin\n"
        "Mix everything in a large bowl until no dry flour remains, then cover and leave it for thirty minutes. "
        "Fold the dough four times over two hours, shape it gently, and let it rise in the fridge overnight. "
        "Bake at 240 degrees in a covered pot for twenty minutes, then uncovered until deeply brown."
    )
    assert boilerplate_reason(recipe) is None
    about_cookies = "Browsers store cookies per site. A session cookie disappears when you close the browser. " + PROSE
    assert boilerplate_reason(about_cookies) is None


def test_repetitive():
    line = "Buy cheap watches online at the best price today!"
    assert repetition("\n".join([line] * 30)) > 0.9
    default = Repetitive(0.3)
    assert default("\n".join([line] * 30)) == "repetitive"
    assert default("Loading... please wait. " * 60) == "repetitive"  # one line, the same sentence over and over
    assert default(" ".join(["the quick brown fox jumps over the lazy dog"] * 20)) == "repetitive"  # no punctuation
    assert default(PROSE) is None
    assert default(PROSE + "\n" + PROSE.split(". ")[0] + ".") is None  # one sentence quoted again
    assert repetition("") == 0.0
    assert default("\n".join([line] * 2 + [PROSE])) is None
    assert Repetitive(0.05)("\n".join([line] * 2 + [PROSE])) == "repetitive"


def test_rules_apply_in_order_and_can_be_switched_off():
    rules = RowRules.from_config(SegmentsConfig())
    assert rules.reason("SHORT AND SHOUTING") == "too_short"
    caps_nav = ("HOME | ABOUT | FORUM | ADVERTISEMENT\n" + PROSE).upper()
    assert rules.reason(caps_nav) == "uppercase"
    nav_repeated = "Home | About | Forum | Free Newsletter\n" + "\n".join(["Same line, again and again."] * 40)
    assert rules.reason(nav_repeated) == "boilerplate"
    assert RowRules.from_config(SegmentsConfig(boilerplate=False)).reason(nav_repeated) == "repetitive"
    assert rules.reason(PROSE) is None
    assert rules.reason(PROSE + "\n" + OTHER) is None
    assert rules.reasons([None, PROSE, "short"]) == ["empty", None, "too_short"]


def test_per_row_rules_on_the_sample_match_its_readme():
    rules = RowRules.from_config(SegmentsConfig())
    for line in SAMPLE.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        category = CATEGORY_OF.get(record["id"])
        expected = category if category in ROW_REASONS else None  # duplicates pass the per-row rules
        assert rules.reason(record["text"]) == expected, record["id"]
