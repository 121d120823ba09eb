"""The job's config: YAML plus `--set dotted.key=value` overrides, validated by pydantic.

Every model forbids unknown keys, so a typo is an error that names its key path.
Secrets are never config values: `api_key_env` holds the NAME of an environment variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from backtrans.jsonl_datasource import ROW_ID_COLUMN

DEFAULT_COLUMNS = ["instruction", "generation", "generation_model", "score", "reason", "scoring_model"]


class ConfigError(ValueError):
    """A config problem, worded as one line that names the key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(_Strict):
    uri: str
    split: str = "train"
    config_name: str | None = None  # Hub datasets with several configs (load_dataset's `name`)
    revision: str | None = None
    rename: dict[str, str] = Field(default_factory=dict)
    limit: int | None = Field(default=None, ge=1)
    bad_lines: Literal["fail", "skip"] = "fail"  # malformed or non-UTF-8 JSONL lines


class StageConfig(_Strict):
    backend: Literal["hf-endpoint", "openai", "simulated"]
    base_url: str | None = None
    endpoint_name: str | None = None
    model: str
    api_key_env: str | None = None
    max_concurrency: int = Field(default=32, ge=1)
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    max_requests: int | None = Field(default=None, ge=1)  # budget: the job stops, resumable, when spent
    max_tokens: int | None = Field(default=None, ge=1)
    failure_window: int = Field(default=50, ge=1)  # the stage is down when most of the last N attempts
    failure_threshold: float = Field(default=0.8, gt=0, le=1)  # ... failed: stop instead of failing every row
    reask_unparseable: bool = False  # score: ask once more when a reply has no parseable score
    timeout_s: float = Field(default=120, gt=0)
    max_retries: int = Field(default=6, ge=0)
    # Actor-pool size; max_concurrency is split across them. Null: one actor per 64 requests in flight.
    actors: int | None = Field(default=None, ge=1)
    max_input_chars: int = Field(default=20_000, ge=1)  # longer text is a row failure, never sent
    generation_kwargs: dict[str, Any] = Field(default_factory=dict)
    template: str | None = None  # a prompt template file; null: the stage's default from prompts/

    @field_validator("api_key_env")
    @classmethod
    def _looks_like_a_name(cls, value: str | None) -> str | None:
        # A pasted key here would be written into cards and logs; refuse anything not shaped like a name.
        if value is not None and not value.replace("_", "").isalnum():
            raise ValueError("must be the NAME of an environment variable (letters, digits, _), not a key")
        return value


class AugmentConfig(StageConfig):
    """The backward model: writes an instruction for each segment (the paper's self-augmentation)."""

    # paper: the instruction-writing prompt of prompts/backward.txt; bare: the segment alone, for a
    # fine-tuned backward model (M_yx) that was trained on bare text. `template:` overrides both.
    prompt: Literal["paper", "bare"] = "paper"
    max_instruction_chars: int = Field(default=1_000, ge=1)  # a longer written instruction is a row failure


class CurationConfig(_Strict):
    """The curated training sets published beside `all`, and what is mixed into them."""

    # dataset config name -> minimum score (the paper's A4: score >= 4, A5: score = 5)
    subsets: dict[str, int] = Field(default_factory=lambda: {"a4": 4, "a5": 5})
    seed: SourceConfig | None = None  # seed pairs (instruction, generation) added to every subset, seed-tagged

    @field_validator("subsets")
    @classmethod
    def _names_and_thresholds(cls, subsets: dict[str, int]) -> dict[str, int]:
        for name, threshold in subsets.items():
            if not name.replace("_", "").replace("-", "").isalnum() or name == "all":
                raise ValueError(f"subset name {name!r}: use letters, digits, - or _, and not 'all'")
            if not 1 <= threshold <= 5:
                raise ValueError(f"subset {name!r}: minimum score {threshold} is not between 1 and 5")
        return subsets


class SegmentsConfig(_Strict):
    """The paper's web-segment filter (backtrans/segments/), applied before any request is spent."""

    text_column: str = "text"  # the web text (after source.rename); it becomes `generation`
    min_chars: int = Field(default=600, ge=0)
    max_chars: int = Field(default=3000, ge=1)
    exact_dedup: bool = True
    near_dedup: bool = True
    near_dup_threshold: float = Field(default=0.8, gt=0, lt=1)  # Jaccard of word 5-gram shingles
    max_repetition: float = Field(default=0.3, gt=0, le=1)  # duplicate lines / sentences / 5-grams in one text
    boilerplate: bool = True  # navigation headers, link-heavy text, cookie banners
    max_uppercase_ratio: float = Field(default=0.5, gt=0, le=1)  # upper / cased letters
    # Of each group of duplicates keep the row with the smallest value here (ties: smallest row_hash).
    # row_hash is arbitrary but stable across runs; a source's own order or date column keeps the first.
    keep_first_by: str = ROW_ID_COLUMN
    num_partitions: int = Field(default=16, ge=1)  # hash partitions of the dedup shuffle (more for big corpora)

    @model_validator(mode="after")
    def _bounds_in_order(self) -> SegmentsConfig:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is over max_chars ({self.max_chars})")
        return self


class OutputConfig(_Strict):
    path: str = "out/instruction-backtranslation"
    columns: list[str] = Field(default_factory=lambda: list(DEFAULT_COLUMNS))
    min_rows_per_file: int = Field(default=50_000, ge=1)  # rows per shard of a finished output
    # Rows per committed write while the job runs: finished rows that are not yet committed are sent
    # again after a kill, so this bounds what a kill costs (besides the rows in flight).
    commit_rows: int = Field(default=1024, ge=1)
    mode: Literal["resume", "overwrite"] = "resume"


class HubConfig(_Strict):
    repo_id: str | None = None
    private: bool = True
    token_env: str = "HF_TOKEN"


class JobConfig(_Strict):
    source: SourceConfig
    segments: SegmentsConfig | None = None  # web corpora: filter documents into segments first
    augment: AugmentConfig | None = None  # web corpora: write an instruction for each segment
    generate: StageConfig | None = None  # seed data: write a response for each instruction
    score: StageConfig
    curation: CurationConfig = Field(default_factory=CurationConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    hub: HubConfig = Field(default_factory=HubConfig)

    @model_validator(mode="after")
    def _one_way_to_make_pairs(self) -> JobConfig:
        if self.augment is not None and self.generate is not None:
            raise ValueError(
                "augment, generate: augment writes instructions for texts, generate writes texts for "
                "instructions; use one"
            )
        if self.segments is not None and self.augment is None:
            raise ValueError("segments: the filtered segments are for the augment stage; add an augment section")
        return self


def _set_dotted(tree: dict, dotted_key: str, raw_value: str) -> None:
    """Apply one `--set a.b.c=value`; the value is parsed as YAML so numbers, lists and null work."""
    *parents, leaf = dotted_key.split(".")
    node = tree
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        if child is None:  # e.g. `generate: null` in the file, then `--set generate.model=x`
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted_key}: {'.'.join(parents[: depth + 1])} is not a section")
        node = child
    node[leaf] = yaml.safe_load(raw_value)


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    key_path = ".".join(str(part) for part in first["loc"]) or "(top level)"
    reason = "unknown key" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
    more = len(error.errors()) - 1
    return f"config key {key_path}: {reason}" + (f" (and {more} more problems)" if more else "")


def load_config(path: str | Path, overrides: list[str] = ()) -> JobConfig:
    """Read a YAML config, apply `dotted.key=value` overrides, validate; ConfigError names the key."""
    try:
        tree = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}".splitlines()[0]) from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {override!r}: expected dotted.key=value")
        _set_dotted(tree, key.strip(), value)
    try:
        return JobConfig.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None
