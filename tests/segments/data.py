"""What the segment tests share: two clean paragraphs, what jobs/data/web_sample.jsonl holds (as its
README describes it, written out here so that no test parses the README), and the sample as a Dataset."""

import uuid
from pathlib import Path

import ray

from backtrans.config import JobConfig, load_config
from backtrans.jsonl_datasource import JsonlDatasource
from backtrans.metrics import start_metrics
from backtrans.output import OutputFolder
from backtrans.segments.filter_pass import read_segments, write_segments
from backtrans.segments.rules import RowRules
from backtrans.sources import resolve_files

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "jobs" / "data" / "web_sample.jsonl"
WEB_DEMO = ROOT / "jobs" / "configs" / "web_demo.yaml"


def _ids(*numbers: int) -> list[str]:
    return [f"doc-{number:04d}" for number in numbers]


# Which rule each deliberately bad document was built to fail, in rule order; the other 156 are good.
BUILT_TO_FAIL = {
    "empty": _ids(48, 68, 85, 216),
    "too_short": _ids(8, 18, 45, 51, 53, 56, 66, 84, 101, 220),
    "too_long": _ids(7, 27, 28, 32, 46, 127, 135, 166),
    "uppercase": _ids(54, 86, 164, 167, 209, 211),
    "boilerplate": _ids(1, 4, 43, 58, 72, 75, 140, 141, 170, 187),
    "repetitive": _ids(38, 42, 69, 108, 120, 179),
    "exact_duplicate": _ids(97, 153, 157, 158, 160, 172, 175, 176, 199, 205, 208, 219),
    "near_duplicate": _ids(14, 60, 61, 119, 138, 162, 189, 201),
}
CATEGORY_OF = {doc: category for category, docs in BUILT_TO_FAIL.items() for doc in docs}
REMOVED = {category: len(docs) for category, docs in BUILT_TO_FAIL.items()}
KEPT = 156

# Each duplicate and the earlier original it copies.
DUPLICATE_OF = dict(
    zip(
        _ids(14, 60, 61, 97, 119, 138, 153, 157, 158, 160, 162, 172, 175, 176, 189, 199, 201, 205, 208, 219),
        _ids(11, 25, 10, 30, 9, 90, 131, 155, 5, 63, 110, 105, 24, 33, 100, 194, 132, 36, 3, 89),
        strict=True,
    )
)

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


class LoggedRule:
    """A rule that appends a line to a file each time it runs: its name, or with `node` the id of the
    Ray node it ran on (in a module the workers can import: the rules run there)."""

    def __init__(self, rule, log: Path, node: bool = False):
        self.rule, self.log, self.node = rule, str(log), node

    def __call__(self, text):
        line = ray.get_runtime_context().get_node_id() if self.node else type(self.rule).__name__
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        return self.rule(text)


def rules_logging_their_first(log: Path, node: bool = False) -> type[RowRules]:
    """`RowRules` whose `from_config` gives the config's rules with the first one (it sees every row)
    a LoggedRule: put it in place of `filter_pass.RowRules` to log each row the rules run on."""

    class FirstRuleLogged(RowRules):
        @classmethod
        def from_config(cls, config):
            first, *others = RowRules.from_config(config).rules
            return RowRules((LoggedRule(first, log, node), *others))

    return FirstRuleLogged


def read_sample() -> ray.data.Dataset:
    return ray.data.read_datasource(JsonlDatasource([str(SAMPLE)]))


def pass_config(output: Path | str, source: Path | str = SAMPLE, **segments) -> JobConfig:
    """The web demo's job on `source` into `output`, with these `segments:` keys."""
    config = load_config(WEB_DEMO, [f"output.path={output}", f"source.uri={source}"])
    config.segments = config.segments.model_copy(update=segments)
    return config


def segment_pass(config: JobConfig) -> tuple[dict, OutputFolder]:
    """Run the segment pass of `config` as the job does; its counts and the output folder."""
    folder = OutputFolder.at(config.output.path)
    name = f"backtrans-test-metrics-{uuid.uuid4().hex[:8]}"
    actor = start_metrics(name)
    try:
        return write_segments(config, folder, name, resolve_files(config.source)), folder
    finally:
        ray.kill(actor)


def kept_segments(config: JobConfig) -> list[dict]:
    return read_segments(config, OutputFolder.at(config.output.path))[0].take_all()
