"""Prompt templates, kept as text files so they can be read and diffed as the paper prints them.

`self_curation.txt` is the paper's Table 1 prompt, verbatim, with the pair's instruction and
response each on its own line after it; `self_curation_json.txt` (`score.method: json`) is the same
rubric verbatim with only its last instruction line asking for a JSON verdict instead of a score
line. `backward.txt` is the instruction-writing prompt the augment stage sends with each segment;
`segment.txt` sends the bare segment (for a fine-tuned backward model).
A template names its inputs as `{instruction}` and `{generation}`; a user may point a stage's
`template:` at a file of their own with the same placeholders.
"""

from __future__ import annotations

import string
from functools import cache
from pathlib import Path

from backtrans.schema import BacktransError

PROMPTS_DIR = Path(__file__).parent
SELF_CURATION = PROMPTS_DIR / "self_curation.txt"
SELF_CURATION_JSON = PROMPTS_DIR / "self_curation_json.txt"
BACKWARD = PROMPTS_DIR / "backward.txt"
SEGMENT = PROMPTS_DIR / "segment.txt"  # augment with `prompt: bare`: the segment alone
INSTRUCTION = PROMPTS_DIR / "instruction.txt"  # generation sends the bare instruction, as distilabel does


class TemplateError(BacktransError, ValueError):
    pass


@cache
def load_template(path: str | Path) -> str:
    """Read a template and check that it only uses the placeholders a stage can fill."""
    text = Path(path).read_text(encoding="utf-8")
    fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    unknown = fields - {"instruction", "generation"}
    if unknown:
        raise TemplateError(f"template {path}: unknown placeholder {{{sorted(unknown)[0]}}}")
    return text


def render(template: str, **values: str) -> str:
    # format_map substitutes once: braces inside the values are left as they are.
    return template.format_map(values)
