"""The score-distribution plot (PNG) that the dataset card shows and the output folder keeps."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only: workers and CI have no display

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def plot_scores(histogram: dict[str, int], path: str, simulated: bool) -> None:
    labels = list(histogram)
    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    bars = axes.bar(labels, [histogram[label] for label in labels], color="#4c72b0")
    axes.bar_label(bars)
    axes.set_xlabel("self-curation score (null: no parseable score or a failed row)")
    axes.set_ylabel("pairs")
    axes.set_title("Score distribution" + (" (SIMULATED scores)" if simulated else ""))
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
