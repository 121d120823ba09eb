"""The score-distribution plot (PNG) that the dataset card shows and the output folder keeps."""

from __future__ import annotations

import io


def plot_scores(histogram: dict[str, int], simulated: bool, expected: dict[str, int] | None = None) -> bytes:
    """The histogram as PNG bytes, for the output folder to store wherever it lives; with `expected`
    (score.method logprobs) the score_expected histogram beside it, in the same file."""
    # Imported here: matplotlib costs 0.4 s of CPU, which the driver would otherwise spend while the
    # job starts. A bare Figure renders to a file without pyplot or a display backend.
    from matplotlib.figure import Figure

    panels = [(histogram, "self-curation score (null: no parseable score or a failed row)", "Score distribution")]
    if expected is not None:
        panels.append((expected, "score_expected (probability-weighted)", "Expected score"))
    figure = Figure(figsize=(6 * len(panels), 3.5), dpi=100)
    for axes, (counts, xlabel, title) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        bars = axes.bar(list(counts), list(counts.values()), color="#4c72b0")
        axes.bar_label(bars)
        axes.set_xlabel(xlabel)
        axes.set_ylabel("pairs")
        axes.set_title(title + (" (SIMULATED scores)" if simulated else ""))
        if expected is not None:
            axes.tick_params(axis="x", labelsize=7)
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png")
    return png.getvalue()
