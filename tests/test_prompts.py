"""Prompt templates: the paper's prompt verbatim, values on their own lines, braces left alone."""

from pathlib import Path

import pyarrow as pa
import pytest

from backtrans.prompts import BACKWARD, INSTRUCTION, SELF_CURATION, TemplateError, load_template, render
from backtrans.sources import _rename_and_id

PAPER = Path(__file__).resolve().parents[2] / "shared" / "reference" / "paper.md"


def test_self_curation_template_is_the_papers_prompt_verbatim():
    template = load_template(SELF_CURATION)
    assert template.startswith("Below is an instruction from an user and a candidate answer.")
    assert template.endswith('write "Score: <rating>" in the last line.\n\n{instruction}\n{generation}\n')
    if PAPER.exists():  # the design folder beside the repo holds the paper's text
        paper = PAPER.read_text(encoding="utf-8")
        start = paper.index("Below is an instruction from an user")
        block = paper[start : paper.index("<generated instruction>", start)]
        assert template.startswith(block)


def test_rendered_prompt_puts_instruction_and_response_on_their_own_lines():
    prompt = render(load_template(SELF_CURATION), instruction="Name a {color}.", generation="Blue {x}.")
    assert prompt.endswith("in the last line.\n\nName a {color}.\nBlue {x}.\n")


def test_generation_sends_the_bare_instruction_and_backward_prompt_wraps_the_text():
    assert render(load_template(INSTRUCTION), instruction="Hi?") == "Hi?"
    backward = render(load_template(BACKWARD), generation="Some web text.")
    assert backward.startswith("Below is a candidate answer to a question or instruction from an user.")
    assert backward.endswith("\n\nSome web text.\n")


def test_unknown_placeholder_is_refused(tmp_path):
    template = tmp_path / "t.txt"
    template.write_text("Rate {instruction} against {answer}")
    with pytest.raises(TemplateError, match=r"unknown placeholder \{answer\}"):
        load_template(template)


def test_rename_maps_columns_like_output_mappings_and_adds_the_stable_id():
    batch = pa.table({"prompt": ["a"], "completion": ["b"], "row_hash": pa.array([7], pa.uint64())})
    renamed = _rename_and_id(batch, {"prompt": "instruction"})
    assert renamed.column_names == ["instruction", "completion", "row_hash", "row_id"]
    assert renamed.column("instruction").to_pylist() == ["a"]
    assert renamed.column("row_id").to_pylist() == [7]


def test_a_source_with_its_own_row_id_keeps_it():
    batch = pa.table({"row_id": pa.array([3], pa.uint64()), "row_hash": pa.array([7], pa.uint64())})
    assert _rename_and_id(batch, {}).column("row_id").to_pylist() == [3]


def test_the_json_prompt_is_the_papers_rubric_with_only_its_last_instruction_changed():
    from backtrans.prompts import SELF_CURATION_JSON

    paper, json_prompt = load_template(SELF_CURATION).splitlines(), load_template(SELF_CURATION_JSON).splitlines()
    changed = [i for i, (a, b) in enumerate(zip(paper, json_prompt, strict=True)) if a != b]
    assert changed == [7] and paper[7].endswith('write "Score: <rating>" in the last line.')
    rendered = render(load_template(SELF_CURATION_JSON), instruction="q", generation="a")
    assert 'as in {"reason": "<reasoning>", "score": <rating>}.\n\nq\na\n' in rendered
