"""BENCHMARKS.md's targets (bench/report.py), from literal runs: no Ray needed."""

from bench.report import _api_targets, _segment_scale_targets


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


def _api(c: int, n: int, whole: float, steady: float, rss: float, pss: float | None, **figures) -> dict:
    run = {"regime": "api", "system": "backtrans", "concurrency": c, "n": n, "fraction_of_limit": whole}
    return run | {"window_fraction_of_limit": steady, "tree_peak_rss_mb": rss, "tree_peak_pss_mb": pss} | figures


def test_the_api_targets_are_judged_on_every_api_run_and_memory_on_summed_rss():
    runs = {
        "api/backtrans-c1024/20000": _api(1024, 20_000, 0.76, 0.91, 2500.0, 1600.0),
        "api/backtrans-c4096/20000": _api(4096, 20_000, 0.74, 0.95, 2900.0, 2000.0),
        "api/backtrans-c4096/100000": _api(4096, 100_000, 0.9, 0.92, 3400.0, 2400.0, ended="stalled"),
    }
    assert _api_targets({"runs": runs}) == [
        (
            "api: steady >= 0.9 of C/L (request window)",
            "C=1,024 N=20,000: 0.910; C=4,096 N=20,000: 0.950; C=4,096 N=100,000: 0.920",
            "met",
            "",
        ),
        (
            "api, N=20,000: whole run >= 0.75 of C/L",
            "C=1,024 N=20,000: 0.760; C=4,096 N=20,000: 0.740",
            "NOT met",
            "",
        ),
        (
            "api, C=4,096: summed memory of the run's processes <= 3 GB",
            "C=4,096 N=20,000: RSS 2,900 MB (PSS 2,000); C=4,096 N=100,000: RSS 3,400 MB (PSS 2,400)",
            "NOT met",
            "",
        ),
        ("api: never a hang", "2 of 3 runs finished", "NOT met", ""),
    ]
