"""Peer: Ray Data LLM's HTTP processor (`ray.data.llm.HttpRequestProcessorConfig`), two processors
chained (generate, then score), configured as its docs say for C requests in flight:
`concurrency=C` ("the number of concurrent requests to send"), `batch_size` left at its default.

Run by the benchmark as a subprocess: `python -m bench.peer_raydata_llm --url URL --rows FILE ...`.
It sends the same prompts as the job (the project's templates), reads the same JSONL file and
writes Parquet. Prints one JSON line: rows written and rows with a score.
"""

from __future__ import annotations

import json
import os
import re
import sys

from bench.peer_cli import peer_parser

SCORE_LINE = re.compile(r"Score:\s*([1-5])")


def main(argv: list[str] | None = None) -> int:
    parser = peer_parser()
    parser.add_argument("--num-cpus", type=float, default=None, help="per actor; default: Ray Data's")
    args = parser.parse_args(argv)

    import ray
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    from backtrans.prompts import INSTRUCTION, SELF_CURATION, load_template, render
    from backtrans.schema import STAGE_HEADER

    generate_prompt = load_template(INSTRUCTION)
    score_prompt = load_template(SELF_CURATION)
    url = args.url.rstrip("/") + "/chat/completions"
    stage = {} if args.num_cpus is None else {"http_request_stage": {"num_cpus": args.num_cpus}}

    def payload(model: str, prompt: str) -> dict:
        return {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 1024,
            "temperature": 0.7,
        }

    generate = build_processor(
        HttpRequestProcessorConfig(url=url, headers={STAGE_HEADER: "generate"}, concurrency=args.concurrency, **stage),
        preprocess=lambda row: {
            "instruction": row["instruction"],
            "payload": payload("bench-generator", render(generate_prompt, instruction=row["instruction"])),
        },
        postprocess=lambda row: {
            "instruction": row["instruction"],
            "generation": row["http_response"]["choices"][0]["message"]["content"],
            "generation_model": "bench-generator",
        },
    )

    def parse_score(text: str):
        found = SCORE_LINE.findall(text)
        return int(found[-1]) if found else None

    score = build_processor(
        HttpRequestProcessorConfig(url=url, headers={STAGE_HEADER: "score"}, concurrency=args.concurrency, **stage),
        preprocess=lambda row: {
            **row,
            "payload": payload(
                "bench-judge", render(score_prompt, instruction=row["instruction"], generation=row["generation"])
            ),
        },
        postprocess=lambda row: {
            "instruction": row["instruction"],
            "generation": row["generation"],
            "generation_model": row["generation_model"],
            "score": parse_score(row["http_response"]["choices"][0]["message"]["content"]),
            "reason": row["http_response"]["choices"][0]["message"]["content"],
            "scoring_model": "bench-judge",
        },
    )

    ray.init(ignore_reinit_error=True, log_to_driver=True)
    out = os.path.join(args.workdir, "out")
    score(generate(ray.data.read_json(args.rows))).write_parquet(out, mode="overwrite")
    import pyarrow.parquet as pq

    scores = pq.read_table(out, columns=["score"]).column("score")
    rows, scored = len(scores), len(scores) - scores.null_count
    print(json.dumps({"rows": rows, "scored": scored}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
