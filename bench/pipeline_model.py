"""What the api regime's figures can reach at all: a discrete-event model of two LLM stages in a row.

`python -m bench.pipeline_model` prints, per (C, N, rows per task), the two fractions of C/L that
the api regime measures, for a job that has no CPU cost, no start-up and an instant write:

- each stage sends at most C requests at once, first come first served (the stage actor's Gate);
- a row's latency is log-normal (the api regime's median and sigma);
- a stage hands its rows on by task: a task of `task_rows` rows ends when its slowest row does
  (Ray Data's map_batches), and the second stage gets the rows when the first one's task ends;
  `task_rows` 1 is a job that streams every row on by itself, the best any design can do.

So the gap between a measured figure and the model's is the job's own cost; the gap between the
model and 1.0 is the pipeline's fill (the second stage waits for the first one's replies), its
drain and the slowest reply, which no design that waits for every reply removes.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
from collections import deque

MEDIAN_S = 4.0
SIGMA = 0.57
STAGES = 2


def simulate(concurrency: int, n: int, task_rows: int, seed: int = 1) -> dict:
    """The request window's and the whole run's fraction of C/L, and the end of the last reply."""
    rng = random.Random(seed)
    mean_s = MEDIAN_S * math.exp(SIGMA**2 / 2)
    waiting = [deque() for _ in range(STAGES)]  # task ids of rows waiting for a slot, one per row
    in_flight = [0] * STAGES
    rows_of: dict[int, int] = {}  # task id -> its rows
    rows_left: dict[int, int] = {}  # task id -> its rows not yet answered
    events: list[tuple[float, int, int, int]] = []  # (time, order, stage, task id)
    order = 0
    starts: list[float] = []
    tasks = 0

    def start_task(stage: int, rows: int) -> None:
        nonlocal tasks
        tasks += 1
        rows_of[tasks] = rows_left[tasks] = rows
        waiting[stage].extend([tasks] * rows)

    def send(stage: int, now: float) -> None:
        nonlocal order
        while in_flight[stage] < concurrency and waiting[stage]:
            task = waiting[stage].popleft()
            in_flight[stage] += 1
            order += 1
            heapq.heappush(events, (now + MEDIAN_S * math.exp(SIGMA * rng.gauss(0, 1)), order, stage, task))
            starts.append(now)

    for first in range(0, n, task_rows):
        start_task(0, min(task_rows, n - first))
    send(0, 0.0)
    end = 0.0
    while events:
        end, _, stage, task = heapq.heappop(events)
        in_flight[stage] -= 1
        rows_left[task] -= 1
        if rows_left[task] == 0 and stage + 1 < STAGES:
            start_task(stage + 1, rows_of[task])  # the task's rows go on together
            send(stage + 1, end)
        send(stage, end)
    limit = concurrency / mean_s
    window = max(starts) + mean_s  # as the bench measures it: first request to last request + L
    return {"window": round(n / window / limit, 3), "whole": round(n / end / limit, 3), "end_s": round(end, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, action="append", help="C per stage (default 1024 4096)")
    parser.add_argument("--n", type=int, action="append", help="rows (default 20000 100000)")
    parser.add_argument("--task-rows", type=int, action="append", help="rows per task (default 1 64)")
    args = parser.parse_args()
    print("| C | N | rows per task | of C/L, request window | of C/L, whole (no start-up) | last reply s |")
    print("|---|---|---|---|---|---|")
    for concurrency in args.concurrency or [1024, 4096]:
        for n in args.n or [20_000, 100_000]:
            for task_rows in args.task_rows or [1, 64]:
                r = simulate(concurrency, n, task_rows)
                print(f"| {concurrency:,} | {n:,} | {task_rows} | {r['window']} | {r['whole']} | {r['end_s']} |")


if __name__ == "__main__":
    main()
