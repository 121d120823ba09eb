"""The dataset card (README.md): YAML front matter the Hub reads, then what was run and what came out."""

from __future__ import annotations

import yaml

SIMULATED_NOTICE = (
    "> **Simulated text.** This run used `backend: simulated`, a deterministic loopback stand-in for an "
    "LLM server. Its generations and scores are not model output; use this data to check the pipeline, "
    "never to train."
)


def _front_matter(summary: dict) -> str:
    meta = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}],
        "task_categories": ["text-generation"],
        "tags": ["synthetic", "instruction-backtranslation", "self-curation", "backtrans"],
        "size_categories": [_size_category(summary["rows"])],
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "1M<n<10M"


def _stage_table(summary: dict) -> str:
    lines = ["| stage | backend | model | requests | prompt tokens | completion tokens |", "|---|---|---|---|---|---|"]
    for name, stage in summary["stages"].items():
        lines.append(
            f"| {name} | {stage['backend']} | `{stage['model']}` | {stage['requests']} "
            f"| {stage['prompt_tokens']} | {stage['completion_tokens']} |"
        )
    return "\n".join(lines)


def _score_table(scores: dict | None) -> str:
    if scores is None:
        return "Scores were not kept in this output."
    lines = ["| score | rows |", "|---|---|"] + [f"| {score} | {count} |" for score, count in scores.items()]
    return "\n".join(lines)


def render_card(summary: dict, repo_id: str | None, scoring_prompt: str) -> str:
    name = repo_id or "PATH/TO/THIS/FOLDER"
    config_yaml = yaml.safe_dump(summary["config"], sort_keys=False)
    parts = [
        _front_matter(summary),
        "# Instruction backtranslation data\n",
        "Built with backtrans, following *Self Alignment with Instruction "
        "Backtranslation* (Li et al., 2023): each pair was scored with the paper's 5-point "
        "self-curation prompt.\n",
        SIMULATED_NOTICE + "\n" if summary["simulated"] else "",
        f"Rows: **{summary['rows']}**\n",
        "## Scores\n",
        _score_table(summary["scores"]) + "\n",
        "## Stages\n",
        _stage_table(summary) + "\n",
        "## Load it\n",
        f'```python\nfrom datasets import load_dataset\n\nds = load_dataset("{name}", split="train")\n```\n',
        "## Config\n",
        "API keys are not part of the config: it names the environment variables they were read from.\n",
        f"```yaml\n{config_yaml}```\n",
        "## Scoring prompt\n",
        "<details><summary>The prompt each pair was scored with</summary>\n",
        f"```text\n{scoring_prompt}```\n\n</details>\n",
    ]
    return "\n".join(part for part in parts if part)
