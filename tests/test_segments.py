"""The web-segment filter: each rule on constructed text, then the whole filter on jobs/data/web_sample.jsonl.

The sample's README lists which documents were built to fail which filter; the Ray test checks that each
is removed by that rule (and only those), that the counts add up, and that the counter agrees with the data.
"""

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray
from pydantic import ValidationError

from backtrans import segments
from backtrans.jsonl_datasource import JsonlDatasource
from backtrans.segments import (
    REASON_COLUMN,
    REASONS,
    SegmentsConfig,
    annotate_segments,
    band_keys,
    boilerplate_reason,
    count_reasons,
    drop_removed,
    filter_segments,
    is_empty,
    is_repetitive,
    is_uppercase,
    jaccard,
    length_reason,
    lsh_params,
    minhash_signatures,
    repetition,
    row_reason,
    uppercase_ratio,
)

DATA = Path(__file__).resolve().parent.parent / "jobs" / "data"
SAMPLE = DATA / "web_sample.jsonl"

PROSE = (
    "Sourdough starter is a mixture of flour and water that wild yeast and lactic acid bacteria have colonised. "
    "Feed it equal weights of flour and water once a day, keep it at room temperature, and it will double in size "
    "within a few hours of each feeding. A starter that smells sharply of acetone is hungry, not ruined: feed it "
    "more often for a couple of days. Whole grain rye flour speeds things up because it carries more nutrients "
    "and more of the microbes you want. Once it rises predictably, you can keep it in the fridge and feed it weekly. "
    "Before baking, take it out the evening before and give it two warm feedings so that it is lively again."
)
OTHER = (
    "The Treaty of Westphalia ended the Thirty Years' War in 1648. It is often cited as the start of the "
    "modern system of sovereign states, although historians now argue that this reading is a later myth. "
    "The negotiations took place in two Westphalian towns, Osnabrück and Münster, over several years."
)


def _category_of_each_id() -> dict[str, str]:
    """The README's table: which rule each deliberately bad document was built to fail."""
    categories = {}
    for line in (DATA / "README.md").read_text(encoding="utf-8").splitlines():
        match = re.match(r"\| `(\w+)` \| \d+ \|.*\| (doc-\d{4}(?:, doc-\d{4})*) \|$", line)
        if match:
            for doc_id in match.group(2).split(", "):
                categories[doc_id] = match.group(1)
    return categories


def _original_of_each_duplicate() -> dict[str, str]:
    text = (DATA / "README.md").read_text(encoding="utf-8")
    return dict(re.findall(r"^\| (doc-\d{4}) \| (doc-\d{4}) \|", text, flags=re.MULTILINE))


CATEGORIES = _category_of_each_id()
DUPLICATE_OF = _original_of_each_duplicate()
EXPECTED = {"empty": 4, "too_short": 10, "too_long": 8, "uppercase": 6, "boilerplate": 10, "repetitive": 6}
EXPECTED |= {"exact_duplicate": 12, "near_duplicate": 8}


def test_the_readme_tables_were_read():
    assert Counter(CATEGORIES.values()) == EXPECTED
    assert len(DUPLICATE_OF) == 20 and DUPLICATE_OF["doc-0014"] == "doc-0011"


def test_config_is_strict():
    with pytest.raises(ValidationError, match="extra"):
        SegmentsConfig(min_char=10)
    with pytest.raises(ValidationError, match="min_chars"):
        SegmentsConfig(min_chars=4000)
    assert SegmentsConfig().model_dump()["near_dup_threshold"] == 0.8


# --- per-row rules, pure functions ------------------------------------------------------------------


def test_empty():
    for text in (None, "", "   ", "\n\t \n"):
        assert is_empty(text)
        assert row_reason(text, SegmentsConfig()) == "empty"
    assert not is_empty(" x ")


def test_length_bounds_are_inclusive():
    assert length_reason("a" * 599) == "too_short"
    assert length_reason("a" * 600) is None
    assert length_reason("a" * 3000) is None
    assert length_reason("a" * 3001) == "too_long"
    assert length_reason("a" * 50, min_chars=10, max_chars=100) is None


def test_uppercase():
    shouting = PROSE.upper()
    assert uppercase_ratio(shouting) == 1.0
    assert is_uppercase(shouting)
    acronyms = PROSE + " NASA, HTML, CSS, USB, GPU and the EU are acronyms, IMPORTANT: so is NATO."
    assert not is_uppercase(acronyms)
    assert uppercase_ratio("ÉCOLE ÜBER ALLES") == 1.0  # non-ASCII letters count too
    assert uppercase_ratio("école über alles") == 0.0
    assert uppercase_ratio("漢字とかな 12345") == 0.0  # no cased letters: never "all caps"
    assert is_uppercase("AAAA bbbb", max_ratio=0.4) and not is_uppercase("AAAA bbbb", max_ratio=0.5)


def test_boilerplate_catches_navigation_cookies_and_link_lists():
    nav = "Home | About | Contact | Advertisement | Forum | Quick Links | Free Newsletter\n" + PROSE
    assert boilerplate_reason(nav) == "nav_header"
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
    assert is_repetitive("\n".join([line] * 30))
    assert is_repetitive("Loading... please wait. " * 60)  # one line, the same sentence over and over
    assert is_repetitive(" ".join(["the quick brown fox jumps over the lazy dog"] * 20))  # no punctuation
    assert not is_repetitive(PROSE)
    assert not is_repetitive(PROSE + "\n" + PROSE.split(". ")[0] + ".")  # one sentence quoted again
    assert repetition("") == 0.0
    assert not is_repetitive("\n".join([line] * 2 + [PROSE]), max_repetition=0.3)
    assert is_repetitive("\n".join([line] * 2 + [PROSE]), max_repetition=0.05)


def test_rules_apply_in_order_and_can_be_switched_off():
    config = SegmentsConfig()
    assert row_reason("SHORT AND SHOUTING", config) == "too_short"
    caps_nav = ("HOME | ABOUT | FORUM | ADVERTISEMENT\n" + PROSE).upper()
    assert row_reason(caps_nav, config) == "uppercase"
    nav_repeated = "Home | About | Forum | Free Newsletter\n" + "\n".join(["Same line, again and again."] * 40)
    assert row_reason(nav_repeated, config) == "boilerplate"
    assert row_reason(nav_repeated, config.model_copy(update={"boilerplate": False})) == "repetitive"
    assert row_reason(PROSE, config) is None
    assert row_reason(PROSE + "\n" + OTHER, config) is None


def test_per_row_rules_on_the_sample_match_its_readme():
    config = SegmentsConfig()
    for line in SAMPLE.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        category = CATEGORIES.get(record["id"], "good")
        expected = None if category in ("good", "exact_duplicate", "near_duplicate") else category
        assert row_reason(record["text"], config) == expected, record["id"]


# --- MinHash / LSH, pure functions --------------------------------------------------------------------


def test_lsh_parameters_catch_pairs_at_the_threshold():
    bands, rows = lsh_params(0.8)
    assert (bands, rows) == (25, 10)
    assert bands * rows <= segments.NUM_PERM

    def candidate(j):
        return 1 - (1 - j**rows) ** bands

    assert candidate(0.8) >= 0.9 and candidate(0.85) > 0.99 and candidate(0.5) < 0.05


def test_minhash_estimates_jaccard_and_near_duplicates_share_a_band():
    other = OTHER
    edited = PROSE.replace("room temperature", "a warm spot").replace("weekly", "every week")
    appended = PROSE + " Discard half before each feeding so it does not outgrow its jar."
    signatures = minhash_signatures([PROSE, edited, appended, other, PROSE])
    assert signatures.shape == (5, segments.NUM_PERM) and signatures.max() < 2**32
    assert (signatures[0] == signatures[4]).all()  # deterministic
    for i, text in ((1, edited), (2, appended), (3, other)):
        estimate = (signatures[0] == signatures[i]).mean()
        assert abs(estimate - jaccard(PROSE, text)) < 0.1
    keys = band_keys(signatures, *lsh_params(0.8))
    assert (keys[0] == keys[2]).any()  # Jaccard ~0.86: a candidate
    assert not (keys[0] == keys[3]).any()
    assert not np.intersect1d(keys[0], keys[3]).size  # different bands never share keys by accident
    # Texts of fewer than five words still get a signature (the text is its one shingle).
    short = minhash_signatures(["two words", "two words", "other words"])
    assert (short[0] == short[1]).all() and not (short[0] == short[2]).all()


def _losers(**columns) -> list[tuple[int, int]]:
    group = pa.table({"shard": pa.array([0] * len(columns["key"]), pa.uint16())} | columns)
    losers = segments._bucket_losers(group)
    return sorted(zip(losers["row_hash"].to_pylist(), losers["dup_code"].to_pylist(), strict=True))


def test_a_row_loses_a_bucket_only_to_a_row_ranked_before_it():
    columns = {
        "key": pa.array([5, 5, 5, 9, 9, 7, 7], pa.uint64()),
        "row_hash": pa.array([30, 10, 20, 40, 30, 50, 50], pa.uint64()),
        "dup_code": pa.array([2, 2, 2, 2, 2, 1, 1], pa.uint8()),
    }
    # 10 wins bucket 5; 30 wins bucket 9 though it lost bucket 5; a repeated id 50 never loses to itself.
    assert _losers(**columns) == [(20, 2), (30, 2), (40, 2)]
    # Ranked by another column first (nulls last), row ids only break ties.
    ranks = pa.array(["doc-3", "doc-9", "doc-1", "doc-2", None, "doc-5", "doc-5"])
    assert _losers(**columns, rank=ranks) == [(10, 2), (30, 2), (30, 2)]


# --- the whole filter on Ray ------------------------------------------------------------------------------


def _read_sample() -> ray.data.Dataset:
    return ray.data.read_datasource(JsonlDatasource([str(SAMPLE)]))


@pytest.mark.usefixtures("local_ray")
def test_sample_filter_matches_the_readme_and_the_counts_add_up():
    # The sample's ids are in file order, so keeping the smallest id keeps the earlier document.
    annotated = annotate_segments(_read_sample(), SegmentsConfig(keep_first_by="id")).materialize()

    reasons = {row["id"]: row[REASON_COLUMN] for row in annotated.select_columns(["id", REASON_COLUMN]).take_all()}
    assert len(reasons) == 220
    wrong = {doc: (reason, CATEGORIES.get(doc)) for doc, reason in reasons.items() if reason != CATEGORIES.get(doc)}
    assert not wrong  # every document is removed by the rule it was built to fail; the good ones are all kept

    expected = {"rows_in": 220, "kept": 156, "removed": {reason: EXPECTED[reason] for reason in REASONS}}
    assert count_reasons(annotated) == expected

    kept, counter = drop_removed(annotated)
    rows = kept.take_all()
    assert counter.counts() == expected
    assert expected["rows_in"] == expected["kept"] + sum(expected["removed"].values())
    assert set(rows[0]) == {"id", "url", "text", "row_hash"}
    kept_ids = {row["id"] for row in rows}
    assert len(rows) == len(kept_ids) == 156
    assert not kept_ids & set(CATEGORIES)
    assert set(DUPLICATE_OF.values()) <= kept_ids  # the originals


@pytest.mark.usefixtures("local_ray")
def test_by_default_the_copy_with_the_smallest_row_hash_is_kept():
    kept, counter = filter_segments(_read_sample(), SegmentsConfig(num_partitions=4))
    rows = {row["id"]: row["row_hash"] for row in kept.select_columns(["id", "row_hash"]).take_all()}
    counts = counter.counts()
    assert counts["kept"] == len(rows) == 156
    assert counts["removed"]["exact_duplicate"] == 12 and counts["removed"]["near_duplicate"] == 8
    everyone = {row["id"]: row["row_hash"] for row in _read_sample().select_columns(["id", "row_hash"]).take_all()}
    for copy, original in DUPLICATE_OF.items():
        first = min((copy, original), key=everyone.get)
        assert first in rows and ({copy, original} - {first}).isdisjoint(rows), (copy, original)


@pytest.mark.usefixtures("local_ray")
def test_filter_without_duplicates_or_dedup():
    history = OTHER + (
        " Delegations from France, Sweden, Spain, the Dutch Republic and the many states of the Holy Roman Empire"
        " attended, and the settlement redrew borders, recognised Swiss independence and confirmed religious terms."
        " Envoys travelled for weeks to reach the towns, and questions of precedence delayed the opening sessions."
    )
    texts = [PROSE, PROSE.replace("flour", "meal"), "too short", history]
    items = [{"text": text, "row_hash": np.uint64(i + 1)} for i, text in enumerate(texts)]
    dataset = ray.data.from_items(items, override_num_blocks=1)
    # No duplicates at all (the meal/flour pair is ~0.77 similar, under 0.95): the dedup still runs.
    config = SegmentsConfig(near_dup_threshold=0.95, num_partitions=2)
    kept, counter = filter_segments(dataset, config)
    assert sorted(row["row_hash"] for row in kept.take_all()) == [1, 2, 4]
    assert counter.counts()["removed"]["too_short"] == 1 and counter.counts()["rows_in"] == 4

    kept, counter = filter_segments(
        dataset.select_columns(["text"]), SegmentsConfig(exact_dedup=False, near_dedup=False)
    )
    assert kept.count() == 3 and counter.counts()["kept"] == 3
