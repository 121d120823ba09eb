"""BENCHMARKS.md's segments targets across N (bench/report.py), from literal runs: no Ray needed."""

from bench.report import _segment_scale_targets


def _run(system: str, n: int, invocation: str = "a", **figures) -> dict:
    run = {"system": system, "n": n, "invocation": invocation, "complete": True, "cpu_s": n / 100}
    return run | {"driver_peak_rss_mb": 250.0, "docs_per_s_per_core": 100.0} | figures


def _keyed(*runs: dict) -> dict:
    return {f"segments/{run['system']}{'-store' if run.get('object_store_mb') else ''}/{run['n']}": run for run in runs}


def test_each_target_is_met_or_not_from_the_figures():
    runs = _keyed(
        _run("backtrans", 200_000, driver_peak_rss_mb=250.0, docs_per_s_per_core=400.0),
        _run("datatrove", 200_000, docs_per_s_per_core=100.0),
        _run("backtrans", 2_000_000, invocation="b", driver_peak_rss_mb=310.0),
        _run("backtrans", 200_000, object_store_mb=100, spilled_bytes=187 * 1024 * 1024),
    )
    assert _segment_scale_targets(runs) == [
        "| target | measured | |",
        "|---|---|---|",
        "| driver peak at N=2,000,000 within 20% of N=200,000 | 250 MB -> 310 MB (+24.0%) | NOT met |",
        "| backtrans docs/s per core >= 1.5x datatrove's (same invocation) | 4.00x at N=200,000 | met |",
        "| the object store spills rather than fails | N=200,000 on 100 MB: spilled 187 MB, complete | met |",
    ]


def test_runs_of_other_invocations_are_not_compared_and_a_store_that_never_filled_shows_nothing_met():
    runs = _keyed(
        _run("backtrans", 20_000, docs_per_s_per_core=400.0),
        _run("datatrove", 20_000, invocation="other"),
        _run("backtrans", 20_000, object_store_mb=100, spilled_bytes=0),
    )
    assert _segment_scale_targets(runs)[2:] == [
        "| the object store spills rather than fails | N=20,000 on 100 MB: spilled 0 MB, complete | NOT met |",
    ]
