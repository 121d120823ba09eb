"""The simulator's replies as pure functions: kinds, scores, reply text, cuts and token counts."""

import hashlib

from backtrans.parse import SCORE_PATTERN, parse_verdict
from backtrans.prompts import BACKWARD, SELF_CURATION, load_template, render
from backtrans.simulator.replies import (
    BACKWARD_PROMPT_PREFIX,
    backward_reply,
    cut,
    generate_reply,
    message_text,
    noscore_reply,
    prompt_digest,
    reply_kind,
    reply_text,
    score_reply,
    simulated_score,
    token_count,
)


def test_simulated_score_is_the_hash_of_the_prompt_mod_5():
    assert [simulated_score(text) for text in ("", "abc")] == [1, 5]
    assert prompt_digest("abc") == hashlib.sha256(b"abc").hexdigest()
    rivers = [
        render(load_template(SELF_CURATION), instruction=f"Name {i} rivers.", generation=f"Rivers {i}.")
        for i in range(6)
    ]
    assert [simulated_score(prompt) for prompt in rivers] == [3, 3, 2, 3, 5, 5]


def test_the_stage_not_the_wording_decides_the_kind():
    judge_prompt = render(load_template(SELF_CURATION), instruction="Name a river.", generation="The Nile.")
    backward_prompt = render(load_template(BACKWARD), generation="The Nile is a river.")
    assert reply_kind("score", "Rate this pair from 1 to 5: ...") == "score"  # a custom judge template
    assert reply_kind("score", backward_prompt) == "score"
    assert reply_kind("generate", judge_prompt) == "generate"
    assert reply_kind(None, judge_prompt) == "generate"  # no header: plain generation
    assert reply_kind("augment", backward_prompt) == "backward"
    assert reply_kind("augment", "The Nile is a river.") == "generate"  # a bare segment
    assert reply_kind("generate", backward_prompt) == "generate"


def test_judge_reply_ends_with_its_score_and_the_reason_holds_none():
    digest = prompt_digest("abc")
    reply = score_reply(digest)
    assert reply.startswith("Simulated judge (not a real model): ")
    assert reply.splitlines()[-1] == "Score: 5"
    verdict = parse_verdict(reply)
    assert verdict.score == 5
    assert SCORE_PATTERN.search(verdict.reason) is None
    assert SCORE_PATTERN.search(noscore_reply(digest)) is None
    assert reply_text("score", "abc", "m", digest, leave_out_score=True) == noscore_reply(digest)


def test_backward_reply_asks_about_the_answer_in_the_prompt():
    labelled = (
        f"{BACKWARD_PROMPT_PREFIX} Write the instruction it answers.\n\n"
        "Answer: The Eiffel Tower was completed in 1889 for the World's Fair in Paris.\n\n"
        "Instruction:"
    )
    project = render(load_template(BACKWARD), generation="Photosynthesis turns light, water and CO2 into sugar.")
    generated = render(load_template(BACKWARD), generation=generate_reply("Explain tides.", "gen", "0" * 64))
    assert (
        backward_reply(labelled)
        == "[simulated instruction] What can you tell me about The Eiffel Tower was completed in 1889 for?"
    )
    assert backward_reply(project) == (
        "[simulated instruction] What can you tell me about Photosynthesis turns light, water and CO2 into sugar?"
    )
    # A simulated generation's "[simulated response from ...]" tag is not part of the question.
    assert backward_reply(generated) == (
        "[simulated instruction] What can you tell me about This text comes from a simulator, not from?"
    )
    assert backward_reply(BACKWARD_PROMPT_PREFIX) == "[simulated instruction] What can you tell me about this answer?"


def test_generation_reply_echoes_the_prompt_and_never_scores():
    judge_prompt = render(load_template(SELF_CURATION), instruction="Name a river.", generation="The Nile.")
    reply = generate_reply(judge_prompt, "gen-model", prompt_digest(judge_prompt))
    assert reply == (
        "[simulated response from gen-model] This text comes from a simulator, not from a language model. It stands "
        'in for an answer to the request that begins "Below is an instruction from an user and a candidate answer. '
        'Evaluate". A real model would write a helpful reply here; the simulator only echoes the opening words so '
        "the pipeline can be exercised end to end (ref a4250cb3d396)."
    )
    long_words = generate_reply("supercalifragilistic " * 12, "m", "0" * 64)
    assert 'begins "' + "supercalifragilistic " * 3 + 'supercalifragi...". ' in long_words  # 80 characters
    assert SCORE_PATTERN.search(reply) is None


def test_cut_like_a_real_server():
    text = "[simulated response from m] This text comes from a simulator"
    assert cut(text, None, None) == (text, "stop")
    assert cut(text, ["from", "text"], None) == ("[simulated response ", "stop")
    assert cut(text, "comes", None) == ("[simulated response from m] This text ", "stop")
    assert cut(text, None, 5) == ("[simulated response ", "length")
    assert cut(text, ["", 3], 1000) == (text, "stop")  # empty and non-string stops are ignored


def test_message_text_and_tokens():
    assert message_text([{"type": "text", "text": "a"}, "b", {"type": "image_url"}, 7]) == "ab"
    assert message_text(None) == ""
    assert message_text(12) == "12"
    assert [token_count(chars) for chars in (0, 1, 4, 5)] == [0, 1, 1, 2]
