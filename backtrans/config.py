"""The job's config: YAML plus `--set dotted.key=value` overrides, validated by pydantic.

Every model forbids unknown keys, so a typo is an error that names its key path.
Secrets are never config values: `api_key_env` holds the NAME of an environment variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from backtrans.schema import ROW_HASH, SCORE_EXPECTED, SCORE_PROBS, BacktransError

DEFAULT_COLUMNS = ["instruction", "generation", "generation_model", "score", "reason", "scoring_model"]


class ConfigError(BacktransError, ValueError):
    """A config problem, worded as one line that names the key path."""


class _Strict(BaseModel):
    # A field's docstring is its description: the README's config table (`config_reference`).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class SourceConfig(_Strict):
    uri: str
    """`hf://datasets/OWNER/NAME` (with `split`), `hf://datasets/OWNER/NAME/path/or/*.parquet`, a local file, folder or
    glob of `.parquet`/`.jsonl`, or `s3://...`"""
    split: str = "train"
    """Hub datasets: the split, resolved by the `datasets` library (file-name patterns or the card's `configs:`)"""
    config_name: str | None = None
    """Hub datasets with several configs (`load_dataset`'s `name`)"""
    revision: str | None = None
    """Hub revision (branch, tag or commit)"""
    rename: dict[str, str] = Field(default_factory=dict)
    """`{old: new}` column renames, like distilabel's `output_mappings`"""
    limit: int | None = Field(None, ge=1)
    """only the first N rows (the same N rows on every resume)"""
    bad_lines: Literal["fail", "skip"] = "fail"
    """malformed or non-UTF-8 JSONL lines: `fail` (naming file and line) or `skip`"""


class PriceConfig(_Strict):
    """What a stage's endpoint charges, in the user's currency per million tokens."""

    input: float = Field(ge=0)
    """price per million prompt tokens"""
    output: float = Field(ge=0)
    """price per million completion tokens"""

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000


class StageConfig(_Strict):
    backend: str
    """`hf-endpoint` (huggingface_hub `AsyncInferenceClient`), `openai` (`openai.AsyncOpenAI`), `simulated` (the
    loopback simulator)"""
    base_url: str | None = None
    """server URL; null means the backend's default (api.openai.com for `openai`)"""
    endpoint_name: str | None = None
    """`hf-endpoint`: a dedicated Inference Endpoint, looked up by name"""
    model: str
    """model id sent with each request and written to `generation_model` / `scoring_model`"""
    api_key_env: str | None = None
    """NAME of the environment variable holding the key"""
    max_concurrency: int = Field(32, ge=1)
    """requests in flight for the stage across the whole job (split evenly over its actors; halved on 429s and raised
    again as they stop)"""
    requests_per_minute: int | None = Field(None, ge=1)
    """rate limit across the whole job (each actor takes an equal share)"""
    tokens_per_minute: int | None = Field(None, ge=1)
    """token rate limit across the whole job (prompt + completion tokens the server reports)"""
    max_requests: int | None = Field(None, ge=1)
    """budget: when spent, the job stops with exit 1, a summary that says so, and a checkpoint to resume from; it holds
    for the output, across its re-runs"""
    max_tokens: int | None = Field(None, ge=1)
    """token budget, like `max_requests`"""
    failure_window: int = Field(50, ge=1)
    """the stage is down when `failure_threshold` of its last N attempts failed: the job stops instead of writing a
    failure for every row"""
    failure_threshold: float = Field(0.8, gt=0, le=1)
    """see `failure_window`"""
    reask_unparseable: bool = False
    """`score`: ask once more when the reply has no parseable `Score:` line (`method: json`: no valid verdict)"""
    timeout_s: float = Field(120, gt=0)
    """per request, in seconds"""
    max_retries: int = Field(6, ge=0)
    """retries of 408/409/429/5xx, timeouts, dropped connections and malformed bodies, with backoff and `Retry-After`"""
    actors: int | None = Field(None, ge=1)
    """actors in the stage's pool (null: from its CPU need, `max_concurrency` / 4 s (or `requests_per_minute`, if lower)
    x 3 ms of CPU per request at 0.8 of a core each, at most the cluster's cores over its stages: 1 up to about 1,000 in
    flight, 4 for 4,096; the run says when its actors were CPU-bound and how many to set); each takes 0.1 CPU and keeps
    its share of `max_concurrency` in flight"""
    max_input_chars: int = Field(20_000, ge=1)
    """longer inputs fail the row without a request"""
    generation_kwargs: dict[str, Any] = Field(default_factory=dict)
    """`max_new_tokens` (sent as `max_tokens`), `temperature`, `top_p`, `stop`, `seed`, `frequency_penalty`,
    `presence_penalty`"""
    template: str | None = None
    """a prompt file with `{instruction}` / `{generation}`; null: the paper's prompt for `score`, the bare instruction
    for `generate`"""
    price: PriceConfig | None = None
    """`{input: X, output: Y}` per million tokens: progress, summary and card show the spend"""

    @field_validator("api_key_env")
    @classmethod
    def _looks_like_a_name(cls, value: str | None) -> str | None:
        # A pasted key here would be written into cards and logs; refuse anything not shaped like a name.
        if value is not None and not value.replace("_", "").isalnum():
            raise ValueError("must be the NAME of an environment variable (letters, digits, _), not a key")
        return value

    @field_validator("generation_kwargs")
    @classmethod
    def _chat_parameters(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        for name in kwargs:
            if name not in GENERATION_KWARGS:
                raise ValueError(
                    f"{name!r} is not a chat-completions parameter (known: {', '.join(GENERATION_KWARGS)})"
                )
        return kwargs

    @field_validator("template")
    @classmethod
    def _template_file(cls, path: str | None) -> str | None:
        if path is not None:
            from backtrans.prompts import TemplateError, load_template

            try:
                load_template(path)
            except FileNotFoundError:
                raise ValueError(f"file not found: {path}") from None
            except (IsADirectoryError, UnicodeDecodeError, TemplateError) as error:
                raise ValueError(str(error)) from None
        return path

    @field_validator("backend")
    @classmethod
    def _registered_backend(cls, name: str) -> str:
        from backtrans.backends import BACKENDS  # the backends import this module for its types

        if name not in BACKENDS:
            raise ValueError(f"{name!r} is not a backend (one of: {', '.join(sorted(BACKENDS))})")
        return name

    @model_validator(mode="after")
    def _backend_keys(self) -> StageConfig:
        from backtrans.backends import backend_for

        backend_for(self).check_config(self)
        return self


# `generation_kwargs` are written with distilabel's names (max_new_tokens); the backends map them
# onto the chat APIs' names.
GENERATION_KWARGS = (
    "max_new_tokens",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "frequency_penalty",
    "presence_penalty",
)


class AugmentConfig(StageConfig):
    """The backward model: writes an instruction for each segment (the paper's self-augmentation)."""

    prompt: Literal["paper", "bare"] = "paper"
    """`paper`: the instruction-writing prompt of `prompts/backward.txt`; `bare`: the segment alone, for a backward
    model fine-tuned on bare text (`template:` overrides both)"""
    max_instruction_chars: int = Field(1_000, ge=1)
    """a longer written instruction is a row failure"""


class ScoreConfig(StageConfig):
    """The self-curation judge: a stage, and how its verdict is read."""

    method: Literal["parse", "logprobs", "json"] = "parse"
    """`parse`: the paper's prompt, the reply's last `Score: N` line; `logprobs`: the probabilities of 1-5 at that score
    token (`score_expected`, `score_probs`); `json`: a structured `{reason, score}` verdict"""


class SubsetRule(_Strict):
    """A curated subset's rule: rows scored at least `min_score` and/or expected at least `min_expected`."""

    min_score: int | None = Field(None, ge=1, le=5)
    """lowest `score` kept"""
    min_expected: float | None = Field(None, ge=1, le=5)
    """lowest `score_expected` kept (`score.method: logprobs`)"""

    @model_validator(mode="after")
    def _some_bound(self) -> SubsetRule:
        if self.min_score is None and self.min_expected is None:
            raise ValueError("a subset rule needs min_score or min_expected")
        return self


def subset_rule(value: int | SubsetRule) -> SubsetRule:
    """A `curation.subsets` value as a rule: `name: 4` is `name: {min_score: 4}`."""
    return SubsetRule(min_score=value) if isinstance(value, int) else value


class CurationConfig(_Strict):
    """The curated training sets published beside `all`, and what is mixed into them."""

    subsets: dict[str, int | SubsetRule] = Field(default_factory=lambda: {"a4": 4, "a5": 5})
    """curated dataset configs: name -> minimum score (the paper's A4: score >= 4, A5: score = 5), or name ->
    `{min_score: N, min_expected: X}` (`score_expected` needs `score.method: logprobs`)"""
    seed: SourceConfig | None = None
    """a source of seed pairs (`instruction`, `generation` after `rename`) mixed into every subset with the seed tag and
    a null score"""

    @field_validator("subsets", mode="before")
    @classmethod
    def _rules(cls, subsets: Any) -> Any:
        # A rule is checked here, so that its error names the subset and its key, not pydantic's union members.
        if not isinstance(subsets, dict):
            return subsets
        rules = {}
        for name, value in subsets.items():
            try:
                rules[name] = SubsetRule.model_validate(value) if isinstance(value, dict) else value
            except ValidationError as error:
                problem = error.errors()[0]
                where = ".".join(str(part) for part in (name, *problem["loc"]))
                raise ValueError(f"{where}: {problem['msg'].removeprefix('Value error, ')}") from None
        return rules

    @field_validator("subsets")
    @classmethod
    def _names_and_thresholds(cls, subsets: dict[str, int | SubsetRule]) -> dict[str, int | SubsetRule]:
        for name, threshold in subsets.items():
            if not name.replace("_", "").replace("-", "").isalnum() or name == "all":
                raise ValueError(f"subset name {name!r}: use letters, digits, - or _, and not 'all'")
            if isinstance(threshold, int) and not 1 <= threshold <= 5:
                raise ValueError(f"subset {name!r}: minimum score {threshold} is not between 1 and 5")
        return subsets


class SegmentsConfig(_Strict):
    """The paper's web-segment filter (backtrans/segments/), applied before any request is spent."""

    text_column: str = "text"
    """the web text (after `source.rename`); it becomes `generation`"""
    min_chars: int = Field(600, ge=0)
    """shortest segment kept (the paper's bound)"""
    max_chars: int = Field(3000, ge=1)
    """longest segment kept (the paper's bound)"""
    exact_dedup: bool = True
    """drop exact duplicates (global)"""
    near_dedup: bool = True
    """drop near duplicates: MinHash over word 5-grams (global)"""
    near_dup_threshold: float = Field(0.8, gt=0, lt=1)
    """Jaccard similarity of word 5-gram shingles that counts as a near duplicate"""
    max_repetition: float = Field(0.3, gt=0, le=1)
    """most duplicate lines / sentences / 5-grams in one text"""
    boilerplate: bool = True
    """drop navigation headers, link-heavy text, cookie banners"""
    max_uppercase_ratio: float = Field(0.5, gt=0, le=1)
    """most upper-case share of cased letters"""
    keep_first_by: str = ROW_HASH
    """of each group of duplicates keep the row with the smallest value here (ties: smallest `row_hash`); a source's own
    order or date column keeps the first"""
    num_partitions: int = Field(16, ge=1)
    """hash partitions of the dedup shuffle (more for big corpora)"""

    @model_validator(mode="after")
    def _bounds_in_order(self) -> SegmentsConfig:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is over max_chars ({self.max_chars})")
        return self


class OutputConfig(_Strict):
    path: str = "out/instruction-backtranslation"
    """local folder, or a URI pyarrow opens (`s3://`, `gs://`, `abfs://`)"""
    columns: list[str] = Field(default_factory=lambda: list(DEFAULT_COLUMNS))
    """columns kept, in order; may add source columns, `error` (failure record), `row_id` (the stable id), `messages`
    (chat export), `origin` or `row_hash`"""
    min_rows_per_file: int = Field(50_000, ge=1)
    """rows per Parquet shard of a finished output"""
    commit_rows: int = Field(1024, ge=1)
    """rows per committed write while the job runs (a kill costs no finished reply again: the reply cache holds it; the
    finished output is compacted to `min_rows_per_file`)"""
    mode: Literal["resume", "overwrite"] = "resume"
    """`resume`: continue an unfinished output, skip a finished one; `overwrite`: start over (the reply cache stays)"""
    keep_cache: bool = False
    """keep the reply cache (`OUTPUT/.cache`, every finished reply) when the run completes, e.g. for a re-score that
    re-uses the generations; an unfinished run always keeps it, so a re-run never pays twice"""
    shared: bool = False
    """a local `path` that every node of the cluster mounts (NFS): without it, a local path on a cluster of more than
    one node is refused"""


class HubConfig(_Strict):
    repo_id: str | None = None
    """set to push"""
    private: bool = True
    """visibility of a repo the job creates"""
    token_env: str = "HF_TOKEN"
    """NAME of the environment variable with the Hub token"""


class JobConfig(_Strict):
    source: SourceConfig
    """where the rows come from"""
    segments: SegmentsConfig | None = None
    """web corpora: filter documents into segments first"""
    augment: AugmentConfig | None = None
    """web corpora: the backward-model stage (all `STAGE.*` keys); needs `segments` or a `generation` column, and
    excludes `generate`"""
    generate: StageConfig | None = None
    """optional stage that writes a response for each instruction; omit it when the input already has `generation`"""
    score: ScoreConfig
    """the self-curation judge"""
    curation: CurationConfig = Field(default_factory=CurationConfig)
    """the curated subsets"""
    output: OutputConfig = Field(default_factory=OutputConfig)
    """where and how the rows are written"""
    hub: HubConfig = Field(default_factory=HubConfig)
    """the Hub push"""

    @model_validator(mode="after")
    def _one_way_to_make_pairs(self) -> JobConfig:
        if self.augment is not None and self.generate is not None:
            raise ValueError(
                "augment, generate: augment writes instructions for texts, generate writes texts for "
                "instructions; use one"
            )
        if self.segments is not None and self.augment is None:
            raise ValueError("segments: the filtered segments are for the augment stage; add an augment section")
        if self.score.method == "logprobs" and "columns" not in self.output.model_fields_set:
            self.output.columns = [*self.output.columns, SCORE_EXPECTED, SCORE_PROBS]  # the default columns
        by_expected = [name for name, rule in self.curation.subsets.items() if subset_rule(rule).min_expected]
        if by_expected and SCORE_EXPECTED not in self.output.columns:
            raise ValueError(
                f"curation.subsets.{by_expected[0]}: min_expected reads {SCORE_EXPECTED}, which needs "
                f"score.method logprobs and {SCORE_EXPECTED} in output.columns"
            )
        return self

    def llm_stages(self) -> dict[str, StageConfig]:
        """The LLM stages this job runs, by name, in the order they run."""
        return {name: stage for name in ("augment", "generate", "score") if (stage := getattr(self, name)) is not None}


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
    """Every problem pydantic found, one line each, each naming its key path."""
    lines = []
    for problem in error.errors():
        # A validator's own message starts with the key it is about ("base_url: ..."): join the paths.
        key_path = ".".join(str(part) for part in problem["loc"])
        reason = "unknown key" if problem["type"] == "extra_forbidden" else problem["msg"].removeprefix("Value error, ")
        head, sep, rest = reason.partition(": ")
        if sep and head.replace("_", "").replace(".", "").isalnum() and head.islower() and " " not in head:
            key_path, reason = ".".join(filter(None, (key_path, head))), rest
        lines.append(f"config key {key_path or '(top level)'}: {reason}")
    return "\n".join(lines)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder; give the path of a YAML file in it") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {str(error).splitlines()[0]}") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> JobConfig:
    """Read a YAML config, apply `dotted.key=value` overrides, validate; ConfigError names the key."""
    tree = _read_yaml(Path(path))
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


# README's config table, made from the fields' descriptions (tests/test_config.py keeps them equal).
# Stage keys are listed once as STAGE.* (generate, augment and score take them all).
_SECTIONS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("source", SourceConfig),
    ("segments", SegmentsConfig),
    ("augment", AugmentConfig),
    ("curation", CurationConfig),
    ("curation.subsets.NAME", SubsetRule),
    ("score", ScoreConfig),
    ("STAGE", StageConfig),
    ("STAGE.price", PriceConfig),
    ("output", OutputConfig),
    ("hub", HubConfig),
)


def _shown_default(field) -> str:
    if field.is_required():
        return "(required)"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
    return f"`{text}`"


def _meaning(field) -> str:
    # A docstring wrapped over lines is one table cell.
    return " ".join(field.description.split())


def config_reference() -> str:
    """The config keys as a Markdown table: key, default, meaning."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for name in ("segments", "augment", "generate"):
        rows.append(f"| `{name}` | absent | {_meaning(JobConfig.model_fields[name])} |")
    for prefix, model in _SECTIONS:
        inherited = StageConfig.model_fields if model in (AugmentConfig, ScoreConfig) else {}
        for key, field in model.model_fields.items():
            if key not in inherited:
                rows.append(f"| `{prefix}.{key}` | {_shown_default(field)} | {_meaning(field)} |")
    return "\n".join(rows)


if __name__ == "__main__":  # `python -m backtrans.config`: README's config table
    print(config_reference())
