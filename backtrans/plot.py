"""The score-distribution plot (PNG) that the dataset card shows and the output folder keeps."""

from __future__ import annotations

import io


def plot_scores(histogram: dict[str, int], simulated: bool) -> bytes:
    """The histogram as PNG bytes, for the output folder to store wherever it lives."""
    # Imported here: matplotlib costs 0.4 s of CPU, which the driver would otherwise spend while the
    # job starts. A bare Figure renders to a file without pyplot or a display backend.
    from matplotlib.figure import Figure

    labels = list(histogram)
    figure = Figure(figsize=(6, 3.5), dpi=100)
    axes = figure.subplots()
    bars = axes.bar(labels, [histogram[label] for label in labels], color="#4c72b0")
    axes.bar_label(bars)
    axes.set_xlabel("self-curation score (null: no parseable score or a failed row)")
    axes.set_ylabel("pairs")
    axes.set_title("Score distribution" + (" (SIMULATED scores)" if simulated else ""))
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png")
    return png.getvalue()
