"""The dataset card (README.md): YAML front matter the Hub reads, then what was run and what came out."""

from __future__ import annotations

import yaml

from backtrans.output import CURATED_DIR, DATA_DIR, PLOT_FILE
from backtrans.summary import CuratedSummary, RunSummary

SIMULATED_NOTICE = (
    "> **Simulated text.** This run used `backend: simulated`, a deterministic loopback stand-in for an "
    "LLM server. Its generations and scores are not model output; use this data to check the pipeline, "
    "never to train."
)


def _config_folders(summary: RunSummary) -> dict[str, str]:
    """`all` (every candidate, the default) and one config per curated subset, so that
    `load_dataset(repo, "a5")` works: config name -> its folder."""
    subsets = summary.curated.subsets if summary.curated else {}
    return {"all": DATA_DIR} | {name: f"{CURATED_DIR}/{name}" for name in subsets}


def _front_matter(summary: RunSummary) -> str:
    folders = _config_folders(summary)
    configs = [
        {"config_name": name, "data_files": [{"split": "train", "path": f"{folder}/*.parquet"}]}
        | ({"default": True} if name == "all" else {})
        for name, folder in folders.items()
    ]
    meta = {"configs": configs}
    if summary.columns:  # every config has the columns of data/ (the subsets are rows of it)
        features = [{"name": column.name, **column.feature} for column in summary.columns]
        meta["dataset_info"] = [{"config_name": name, "features": features} for name in folders]
    meta |= {
        "task_categories": ["text-generation"],
        "tags": ["synthetic", "instruction-backtranslation", "self-curation", "backtrans"],
        "size_categories": [_size_category(summary.rows)],
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "1M<n<10M"


def _stage_table(summary: RunSummary) -> str:
    lines = ["| stage | backend | model | requests | prompt tokens | completion tokens |", "|---|---|---|---|---|---|"]
    for name, stage in summary.stages.items():
        lines.append(
            f"| {name} | {stage.backend} | `{stage.model}` | {stage.requests} "
            f"| {stage.prompt_tokens} | {stage.completion_tokens} |"
        )
    if summary.spend is not None:
        lines.append(f"\nSpend of the last run at the configured prices: {summary.spend:,.2f}.")
    return "\n".join(lines)


def _column_table(summary: RunSummary) -> str:
    lines = ["## Columns\n", "| column | Arrow type |", "|---|---|"]
    lines += [f"| `{column.name}` | `{column.type}` |" for column in summary.columns]
    return "\n".join(lines) + "\n"


def _score_table(scores: dict | None) -> str:
    if scores is None:
        return "Scores were not kept in this output."
    lines = ["| score | rows |", "|---|---|"] + [f"| {score} | {count} |" for score, count in scores.items()]
    return "\n".join(lines)


def _unscored_table(summary: RunSummary) -> str:
    """The share of this run's pairs the judge left without a score, by cause."""
    if not summary.unscored or "score" not in summary.stages:
        return ""
    rows = summary.stages["score"].rows
    lines = ["Pairs without a score (this run), by cause:\n", "| cause | pairs | share |", "|---|---|---|"]
    lines += [f"| {cause} | {count} | {count / rows:.1%} |" for cause, count in summary.unscored.items()]
    return "\n".join(lines) + "\n"


def _expected_table(expected: dict | None) -> str:
    if expected is None:
        return ""
    lines = ["`score_expected`, the probability-weighted score (`score.method: logprobs`):\n"]
    lines += ["| score_expected | rows |", "|---|---|"] + [f"| {band} | {count} |" for band, count in expected.items()]
    return "\n".join(lines) + "\n"


def _rule(threshold) -> str:
    if isinstance(threshold, int):
        return f"score >= {threshold}"
    bounds = [("score", threshold.min_score), ("score_expected", threshold.min_expected)]
    return " and ".join(f"{column} >= {bound}" for column, bound in bounds if bound is not None)


def _filter_table(segments: dict | None) -> str:
    if segments is None:
        return ""
    lines = [
        "## Segment filter\n",
        f"{segments['rows_in']} documents in, {segments['kept']} segments kept.\n",
        "| rule | rows removed |",
        "|---|---|",
    ]
    lines += [f"| {rule} | {rows} |" for rule, rows in segments["removed"].items()]
    return "\n".join(lines) + "\n"


def _subset_table(curated: CuratedSummary | None, repo_name: str) -> str:
    if not curated:
        return ""
    thresholds, sizes, moves = curated.thresholds, curated.subsets, curated.moves
    header = "| config | rows | rule |" + (" entered | left |" if moves else "")
    lines = ["## Curated subsets\n", header, "|---|---|---|" + ("---|---|" if moves else "")]
    for name, rows in sizes.items():
        line = f"| `{name}` | {rows} | {_rule(thresholds[name])} |"
        moved = moves.get(name, {"entered": "-", "left": "-"}) if moves else None  # "-": a score_expected rule
        lines.append(line + (f" {moved['entered']} | {moved['left']} |" if moved else ""))
    if moves:
        lines.append("\nEntered / left: pairs that moved into or out of the subset against `score_prev`.")
    if curated.seed:
        lines.append(f"\nEach subset also holds the seed pairs of `{curated.seed}`, tagged as seed data.")
    example = next(iter(sizes))
    lines.append(f'\n```python\nload_dataset("{repo_name}", "{example}", split="train")\n```')
    return "\n".join(lines) + "\n"


def render_card(summary: RunSummary, repo_id: str | None, scoring_prompt: str) -> str:
    name = repo_id or "PATH/TO/THIS/FOLDER"
    config_yaml = yaml.safe_dump(summary.config, sort_keys=False)
    parts = [
        _front_matter(summary),
        "# Instruction backtranslation data\n",
        "Built with backtrans, following *Self Alignment with Instruction "
        "Backtranslation* (Li et al., 2023): "
        + ("a backward model wrote an instruction for each web segment, and " if "augment" in summary.stages else "")
        + "each pair was scored with the paper's 5-point self-curation prompt.\n",
        SIMULATED_NOTICE + "\n" if summary.simulated else "",
        f"Rows: **{summary.rows}**\n",
        _column_table(summary) if summary.columns else "",
        "## Scores\n",
        _score_table(summary.scores) + "\n",
        _unscored_table(summary),
        _expected_table(summary.score_expected),
        f"![Score distribution]({PLOT_FILE})\n" if summary.plot else "",
        _subset_table(summary.curated, name),
        _filter_table(summary.segments),
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
