"""The api regime's model of two stages in a row (bench/pipeline_model.py)."""

from bench.pipeline_model import simulate


def test_rows_streamed_one_by_one_finish_no_later_than_rows_held_by_their_task():
    streamed, by_task = simulate(64, 2000, 1), simulate(64, 2000, 64)
    assert streamed["end_s"] <= by_task["end_s"]
    assert by_task["window"] <= streamed["window"] < 1


def test_the_fill_and_drain_weigh_less_as_n_grows():
    assert simulate(64, 500, 1)["window"] < simulate(64, 5000, 1)["window"]
