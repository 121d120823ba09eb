"""Peer: distilabel's seed pipeline (TextGeneration -> InstructionBacktranslation -> KeepColumns).

Run by the benchmark as a subprocess: `python -m bench.peer_distilabel --url URL --rows FILE ...`.
The source is the same JSONL file the job reads (LoadDataFromFileSystem in place of
LoadDataFromHub, so no network); both tasks use `OpenAILLM` pointed at the same simulator, with
`input_batch_size` = C, which is how distilabel sets the number of requests in flight per step.
Each LLM names its stage in the X-Backtrans-Stage header (`default_headers`, which OpenAILLM has
since distilabel's PR #1088), as the job's clients do: the simulator judges only requests marked `score`.
Prints one JSON line: rows written and rows with a score.
"""

from __future__ import annotations

import json
import os
import sys

from bench.peer_cli import peer_parser


def main(argv: list[str] | None = None) -> int:
    args = peer_parser().parse_args(argv)

    os.environ.setdefault("DISTILABEL_LOG_LEVEL", "WARNING")
    from distilabel.models import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import KeepColumns, LoadDataFromFileSystem
    from distilabel.steps.tasks import InstructionBacktranslation, TextGeneration

    from backtrans.schema import STAGE_HEADER

    if "default_headers" not in OpenAILLM.model_fields:
        raise SystemExit("this distilabel's OpenAILLM has no default_headers: the stage header cannot be sent")
    generation_kwargs = {"max_new_tokens": 1024, "temperature": 0.7}

    def llm(model: str, stage: str) -> OpenAILLM:
        return OpenAILLM(
            model=model,
            base_url=args.url,
            api_key="unused",
            default_headers={STAGE_HEADER: stage},
            generation_kwargs=generation_kwargs,
        )

    with Pipeline(name="bench-seed", cache_dir=os.path.join(args.workdir, "cache")) as pipeline:
        load = LoadDataFromFileSystem(data_files=args.rows, batch_size=args.concurrency)
        generate = TextGeneration(
            llm=llm("bench-generator", "generate"),
            input_batch_size=args.concurrency,
            output_mappings={"model_name": "generation_model"},
        )
        score = InstructionBacktranslation(
            llm=llm("bench-judge", "score"),
            input_batch_size=args.concurrency,
            output_mappings={"model_name": "scoring_model"},
        )
        keep = KeepColumns(
            columns=["instruction", "generation", "generation_model", "score", "reason", "scoring_model"]
        )
        load >> generate >> score >> keep

    distiset = pipeline.run(use_cache=False)
    table = distiset["default"]["train"]
    scores = table["score"]
    print(json.dumps({"rows": table.num_rows, "scored": sum(s is not None for s in scores)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
