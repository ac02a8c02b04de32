"""The selection's pictures: what each draws, read back from the figure."""

import numpy as np

from common.plots import WINDOW_COLOUR, deltas_by_rank, png


def test_deltas_by_rank_shades_the_window_and_marks_where_deltas_turn_negative():
    deltas = np.array([2.0, 1.0, 0.5, 0.1, -0.2, -1.0])
    figure = deltas_by_rank(deltas, window=(1, 3), truncated_at=4, title="step 6")
    (ax,) = figure.axes
    (points,) = [line for line in ax.lines if line.get_label() == "samples"]
    assert points.get_ydata().tolist() == deltas.tolist()
    (shade,) = [p for p in ax.patches if p.get_label() == "window"]
    assert (shade.get_x(), shade.get_x() + shade.get_width()) == (1, 3)
    (cut,) = [line for line in ax.lines if line.get_label() == "δ turns negative"]
    assert cut.get_xdata()[0] == 4
    assert ax.get_title() == "step 6" and WINDOW_COLOUR
    assert png(figure).startswith(b"\x89PNG\r\n\x1a\n")


def test_groups_colour_the_samples_and_no_window_draws_no_shade():
    deltas = np.array([1.0, 0.5, 0.0])
    figure = deltas_by_rank(
        deltas, window=None, truncated_at=None, title="", groups=["add", "noise", "add"]
    )
    (ax,) = figure.axes
    by_label = {line.get_label(): list(line.get_ydata()) for line in ax.lines}
    assert by_label["add"] == [1.0, 0.0] and by_label["noise"] == [0.5]
    assert not [p for p in ax.patches if p.get_label() == "window"]
