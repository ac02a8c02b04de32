"""The selection's pictures: what each draws, read back from the figure."""

import matplotlib.colors
import numpy as np

from common.api.plots import (
    GROUP_COLOURS,
    MAX_GROUPS,
    OTHER,
    OTHER_COLOUR,
    WINDOW_COLOUR,
    deltas_by_rank,
    eval_loss,
    fewer_groups,
    png,
    trajectories,
)


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
    ax, strip = figure.axes
    by_label = {line.get_label(): list(line.get_ydata()) for line in ax.lines}
    assert by_label["add"] == [1.0, 0.0] and by_label["noise"] == [0.5]
    assert not [p for p in ax.patches if p.get_label() == "window"]
    # the strip: a row per group, at its samples' ranks, in the group's colour
    rows = {tuple(line.get_ydata()): list(line.get_xdata()) for line in strip.lines}
    assert rows == {(0, 0): [0, 2], (1,): [1]}
    assert [t.get_text() for t in strip.get_yticklabels()] == ["add", "noise"]
    assert (
        strip.lines[0].get_color()
        == [ln for ln in ax.lines if ln.get_label() == "add"][0].get_color()
    )


def test_more_kinds_than_the_legend_holds_keep_the_most_frequent_and_the_rest_is_other():
    # kind k appears 20 - k times: the 9 most frequent are k0..k8
    groups = [f"k{k}" for k in range(12) for _ in range(20 - k)]
    deltas = np.linspace(1.0, -1.0, len(groups))
    figure = deltas_by_rank(deltas, window=(2, 5), truncated_at=7, title="", groups=groups)
    ax, strip = figure.axes
    lines = {line.get_label(): line for line in ax.lines if line.get_marker() == "."}
    assert list(lines) == [f"k{k}" for k in range(MAX_GROUPS - 1)] + [OTHER]
    assert len(lines[OTHER].get_ydata()) == 11 + 10 + 9  # k9, k10, k11
    assert lines[OTHER].get_color() == OTHER_COLOUR
    colours = [lines[f"k{k}"].get_color() for k in range(MAX_GROUPS - 1)]
    assert len(set(colours)) == len(colours) and WINDOW_COLOUR not in colours
    assert fewer_groups(["a", "b", "a"]) == ["a", "b", "a"]  # few kinds: as given
    assert len(strip.patches) == 1 and strip.get_ylim() == (MAX_GROUPS - 0.5, -0.5)


def test_as_many_kinds_as_colours_are_all_named_in_their_own_colour():
    groups = [f"k{k}" for k in range(len(GROUP_COLOURS))]
    figure = deltas_by_rank(
        np.zeros(len(groups)), window=None, truncated_at=None, title="", groups=groups
    )
    colours = [matplotlib.colors.to_hex(line.get_color()) for line in figure.axes[0].lines[:-1]]
    assert OTHER not in [line.get_label() for line in figure.axes[0].lines]
    assert len(set(colours)) == len(GROUP_COLOURS)


def test_numeric_groups_are_listed_by_value():
    figure = deltas_by_rank(
        np.array([3.0, 2.0, 1.0]), window=None, truncated_at=None, title="",
        groups=["10", "9", "2.5"],
    )  # fmt: skip
    labels = [line.get_label() for line in figure.axes[0].lines if line.get_marker() == "."]
    assert labels == ["2.5", "9", "10"]


def test_eval_loss_by_step_with_the_updates_marked():
    figure = eval_loss([0, 50, 100], [2.0, 1.5, 1.2], update_steps=[30, 60])
    (ax,) = figure.axes
    (points,) = [line for line in ax.lines if line.get_label() == "eval loss"]
    assert points.get_xdata().tolist() == [0, 50, 100]
    assert points.get_ydata().tolist() == [2.0, 1.5, 1.2]
    assert [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":"] == [30, 60]


def test_trajectories_draw_a_line_per_sample_and_say_when_there_is_none():
    figure = trajectories({"#1": [(2, 1.0), (4, 0.5)], "#2": []}, "t")
    (ax,) = figure.axes
    assert [line.get_label() for line in ax.lines] == ["#1"]
    assert not ax.texts
    empty = trajectories({"#1": []}, "t").axes[0]
    assert not empty.lines and empty.texts[0].get_text() == "no scored loss yet"
