"""Command line: `backtrans run CONFIG.yaml [--set dotted.key=value ...]`, and `backtrans submit` (the
same, as a Ray job on a cluster, with the keys taken along).

`run` uses the cluster at RAY_ADDRESS when it is set, else a local Ray. Exit status 0 only when the
output is complete; otherwise a one-line reason on stderr and a non-zero status.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

from backtrans.errors import mask, root_failure
from backtrans.schema import BacktransError

EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backtrans", description="Instruction backtranslation as a Ray Data job.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the job a config describes")
    submit = commands.add_parser("submit", help="`ray job submit` the job, with the keys the config names")
    for command in (run, submit):
        command.add_argument("config", help="path to a YAML config (see jobs/configs/)")
        command.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
        )
    submit.add_argument("--address", help="the cluster's dashboard, e.g. http://head:8265 (default: RAY_ADDRESS)")
    submit.add_argument("--runtime-env", help="a runtime_env YAML, e.g. cluster/runtime_env.yaml")
    submit.add_argument("--working-dir", default=".", help="uploaded for the job, as with ray job submit (default: .)")
    submit.add_argument("--no-wait", dest="wait", action="store_false", help="return once the job is submitted")
    return parser


def _report(result) -> None:
    from backtrans.progress import format_money

    summary = result.summary
    if result.state == "skip":
        print(f"backtrans: {result.output_path} is already complete; nothing to do (output.mode=overwrite redoes it)")
        return
    if result.state == "push":
        print(f"backtrans: {result.output_path} was complete; pushed it to {summary.pushed.repo} (no model requests)")
        return
    segments = summary.segments
    if segments:
        removed = ", ".join(f"{rule}: {rows}" for rule, rows in segments["removed"].items())
        print(f"backtrans: segments {segments['rows_in']} in, {segments['kept']} kept; removed {removed}")
    print(f"backtrans: wrote {summary.rows} rows to {result.output_path}/data")
    if summary.skipped_lines_this_run:
        print(f"backtrans: skipped {summary.skipped_lines_this_run} malformed JSONL lines (source.bad_lines: skip)")
    if summary.scores is not None:
        print("backtrans: scores " + ", ".join(f"{k}: {v}" for k, v in summary.scores.items()))
    if summary.curated:
        sizes = summary.curated.subsets.items()
        print("backtrans: curated " + ", ".join(f"{name}: {rows} rows" for name, rows in sizes))
        for name, moved in (summary.curated.moves or {}).items():
            print(f"backtrans: {name} against score_prev: {moved['entered']} entered, {moved['left']} left")
    failures = {f"{stage}.{kind}": n for stage, kinds in summary.failures_this_run.items() for kind, n in kinds.items()}
    if failures:
        print("backtrans: row failures " + ", ".join(f"{k}: {v}" for k, v in failures.items()))
    for name, stage in summary.stages.items():
        if stage.actors_needed is not None:
            per_request = 1000 * stage.cpu_s / max(1, stage.requests)
            print(
                f"backtrans: {name}'s {stage.actors} actor(s) were CPU-bound ({per_request:.1f} ms of CPU per "
                f"request): {name}.actors: {stage.actors_needed} sends faster where the cluster has the cores"
            )
    if summary.spend is not None:
        print(f"backtrans: spend {format_money(summary.spend)} (stage prices x the tokens the servers reported)")
    if summary.simulated:
        print("backtrans: the model text is SIMULATED (backend: simulated), not output of a real model")
    if summary.pushed:
        print(f"backtrans: pushed to {summary.pushed.repo} (commit {summary.pushed.commit[:12]})")


def run(config_path: str, overrides: list[str], started: float | None = None) -> int:
    """`started`: when the process started, for the run summary's start-up phase."""
    from backtrans.config import ConfigError, load_config
    from backtrans.submit import load_submitted_keys

    load_submitted_keys()
    try:
        config = load_config(config_path, overrides)
    except ConfigError as error:
        print(f"backtrans: error: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG

    from backtrans import progress

    # From here on Ray's own output (its loggers, the C++ core worker, warnings, teardown at exit)
    # goes to a log file, and backtrans' lines to the terminal; errors stay one line, the last.
    ray_output = progress.quiet_ray()
    try:
        return _run(config, ray_output, started)
    finally:
        ray_output.finished()


def _run(config, ray_output, started: float | None) -> int:
    from backtrans import progress

    named_log = False
    try:
        import ray

        from backtrans.job import run_job

        # A local Ray started for this one job skips the dashboard: it costs several CPU-seconds while
        # the job starts (BENCHMARKS.md). For a dashboard, `ray start --head` and set RAY_ADDRESS; on an
        # existing cluster this argument is ignored. Workers' output stays in Ray's session logs:
        # stage failures reach the driver as exceptions and as `error` records.
        from backtrans.resources import keep_idle_workers

        keep_idle_workers()  # for a local Ray; a cluster's nodes set it where they start
        ray.init(ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
        session_logs = progress.ray_logs_dir()
        where = f"{session_logs} (this run: {ray_output.log_path})" if session_logs else ray_output.log_path
        progress.say(f"backtrans: Ray's logs: {where}")
        named_log = True
        result = run_job(config, started)
    except BacktransError as error:  # ours: the message is the one line
        progress.say(f"backtrans: error: {mask(str(error))}")
        return EXIT_FAILED
    except Exception as error:  # the contract: any failure is one line on stderr and a non-zero exit
        traceback.print_exc()  # to the log file
        log = "" if named_log else f" (Ray's output: {ray_output.log_path})"  # Ray did not start
        progress.say(f"backtrans: error: {root_failure(error)[1]}{log}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        progress.say("backtrans: error: interrupted; run the same command again to resume")
        return EXIT_INTERRUPTED
    _report(result)
    return 0


def job_entrypoint() -> int:
    """`python jobs/NAME.py CONFIG.yaml [--set ...]`: the `ray job submit` entrypoints, which run the
    same job as `backtrans run`."""
    return main(["run", *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    started = time.time()  # before Ray and the job's modules are imported: they are part of the start-up
    args = _parser().parse_args(argv)
    if args.command == "submit":
        return submit_job(args)
    return run(args.config, args.overrides, started)


def submit_job(args: argparse.Namespace) -> int:
    from backtrans.config import ConfigError, load_config
    from backtrans.submit import submit

    try:
        config = load_config(args.config, args.overrides)  # a bad config never reaches the cluster
    except ConfigError as error:
        print(f"backtrans: error: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    try:
        return submit(config, args.config, args.overrides, address=args.address, runtime_env_file=args.runtime_env,
                      working_dir=args.working_dir, wait=args.wait)  # fmt: skip
    except BacktransError as error:
        print(f"backtrans: error: {mask(str(error))}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:  # e.g. no dashboard at the address: one line, as for `run`
        print(f"backtrans: error: {root_failure(error)[1]}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
