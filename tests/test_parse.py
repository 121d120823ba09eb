"""The score parser on replies real judges write, including every distilabel failure in paper.md."""

import pytest

from backtrans.parse import parse_verdict

CASES = [
    # (reply, expected score)
    ("The answer is complete and helpful.\nScore: 5", 5),
    ("Reasoning here.\nScore: 4", 4),
    ("Score: 5", 5),  # distilabel fails a reply that starts with the score line
    ("Fine.\nscore: 3", 3),  # lower case
    ("Fine.\nSCORE: 2", 2),
    ("Fine.\n**Score:** 4", 4),  # markdown around the label
    ("Fine.\n**Score: 4**", 4),
    ("Fine.\n**Score**: 4", 4),
    ("Fine.\n__Score:__ 3", 3),
    ("Fine.\nScore: **5**", 5),
    ("Fine.\nScore: 4/5", 4),
    ("Fine.\nScore: 4 / 5", 4),
    ("Fine.\nScore: 5.", 5),  # trailing punctuation
    ("Fine.\nScore:   3  ", 3),
    ("Fine.\nScore:5", 5),
    ("Fine.\nScore: 4.0", 4),
    ("At first glance I'd say Score: 2, but it covers every ask.\nScore: 5", 5),  # last wins
    ("It earns the top mark. Score: 5", 5),  # mid-line verdict
    ("Fine.\nScore: 10", None),  # distilabel reads this as 1
    ("Fine.\nScore: 0", None),
    ("Fine.\nScore: 6", None),
    ("Fine.\nScore: 91", None),
    ("Fine.\nScore: 1986", None),
    ("Fine.\nScore: 8/10", None),
    ("Fine.\nScore: 4.5", None),
    ("I cannot rate this answer.", None),
    ("", None),
    (None, None),
    ("The underscore: 5 spaces are used.", None),  # not a score label
    ("Scale: 1 bad ... 5 perfect.\nThe answer is truncated", None),  # truncated before the score line
    ("Score: <rating>", None),  # the template echoed back
]


@pytest.mark.parametrize(("reply", "expected"), CASES)
def test_score(reply, expected):
    assert parse_verdict(reply).score == expected


def test_reason_is_the_text_before_the_score():
    verdict = parse_verdict("The answer is clear and complete.\n**Score:** 4")
    assert verdict.reason == "The answer is clear and complete."


def test_unparseable_reply_is_kept_whole_as_reason():
    reply = "I would rate this highly but will not give a number."
    assert parse_verdict(reply).reason == reply


def test_out_of_range_keeps_raw_reply():
    assert parse_verdict("Great.\nScore: 10").reason == "Great.\nScore: 10"
