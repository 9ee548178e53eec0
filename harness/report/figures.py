"""Report figures (Agg backend, seaborn's theme; matplotlib and seaborn are imported when a figure is
drawn): mIoU against each ablation axis, per-class gain bars, training curves from the metric history.
Each figure is saved as PNG and SVG without timestamps, so a figure's files are reproducible.

Training curves: the evaluation metric per evaluation (mean over seeds, ± 1 sd). The losses, the
pseudo-label weight and the throughput from the dense `train/` logs (every `log_interval` iterations,
`harness.study.tracking`) in one figure, each run smoothed with a centred rolling mean (`smooth_window`
logged points, about 5% of the run and at least 5; fewer at both ends), then the mean over seeds with a
min-max band (`_dense_lines`); runs logged before the dense logs existed show the losses per evaluation,
as before.

The axis figure is seaborn's. The gain bars and the curves are drawn with matplotlib exactly as
seaborn's catplot, lineplot and relplot drew them (colours, bars, lines, bands, facets, legend, and
the same layout steps; tests/test_report_speed.py compares the PNGs byte for byte): seaborn spent two
thirds of their time on per-call machinery (a groupby per facet and level, two extra full draws to
place the legend), which made them most of the report's time.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from harness.labels import CLASSES
from harness.report.runs import KNOWN_ORDER, METRIC_LABEL, NO_AUX, StudyData, _sort, iou_metric
from harness.report.stats import _baseline_mask
from harness.report.tables import _label
from harness.study.tracking import TRAIN

DENSE_STATS = {"stat/pseudo_weight": "pseudo-label weight", "throughput": "throughput (images/s)"}


def curve_keys(data: StudyData) -> list[str]:
    """The loss keys the training curves read besides the headline metric: each loss per evaluation and
    its dense `train/` log, and the dense pseudo-label weight and throughput."""
    losses = [c for c in data.runs.columns if c.startswith("loss/")]
    return [*losses, *(TRAIN + k for k in losses), *(TRAIN + k for k in DENSE_STATS)]


def _save(fig, folder: Path, name: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / f"{name}.png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(folder / f"{name}.svg", bbox_inches="tight", metadata={"Date": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return [f"{name}.png", f"{name}.svg"]


def _plotting():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "udabench"  # reproducible SVG ids
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    return plt, sns


def fig_axis(data: StudyData, axis: str, folder: Path) -> tuple[str, str] | None:
    """Headline mIoU against one ablation axis: line with a seed band (numeric axis) or points with
    sd bars (categorical axis, e.g. Rebuilder preset); dashed lines = host without aux task."""
    plt, sns = _plotting()
    runs = data.runs
    on = runs[runs[axis] != "–"].copy()
    if on.empty:
        return None
    others = [a for a in data.axes if a != axis]
    on["method"] = _label(on, others)
    name = axis[len("axis:"):]
    ylabel = f"target {METRIC_LABEL[data.metric]} (%)"
    fig, ax = plt.subplots(figsize=(6, 3.6))
    num = pd.to_numeric(on[axis], errors="coerce")
    # a search (every run its own setting) or a long list of settings: points, not lines
    many = (on[axis].nunique() > 8 or on["method"].nunique() > 8
            or (bool(others) and on["method"].nunique() == len(on)))
    if num.notna().all() and many:
        on["x"] = num
        numeric_others = [a for a in others if pd.to_numeric(on[a], errors="coerce").notna().all()]
        hue = None
        if numeric_others:
            hue = numeric_others[0][len("axis:"):]
            on[hue] = pd.to_numeric(on[numeric_others[0]]).round(4)
        sns.scatterplot(data=on, x="x", y=data.metric, hue=hue, palette="viridis" if hue else None,
                        style="architecture" if on["architecture"].nunique() > 1 else None, ax=ax)
        if num.min() > 0 and num.max() / num.min() >= 20:
            ax.set_xscale("log")
        kind = "one point per run" + (f", colour = {hue}" if hue else "")
    elif num.notna().all():
        on["x"] = num
        sns.lineplot(data=on, x="x", y=data.metric, hue="method", errorbar="sd", marker="o", ax=ax)
        kind = "line = mean over seeds, band = ± 1 sd"
    else:
        if on.groupby(axis)["method"].nunique().max() == 1:  # the axis names the method (task=mic)
            on["method"] = _label(on.assign(aux=NO_AUX), others)
        order = list(_sort(on, [axis])[axis].drop_duplicates())
        ordered = all(v in KNOWN_ORDER for v in order)  # sizes: a line; names (task=mic): no line
        sns.pointplot(data=on, x=axis, y=data.metric, hue="method", errorbar="sd", order=order,
                      dodge=0.3 if on["method"].nunique() > 1 else False, ax=ax, capsize=0.1,
                      linestyle="-" if ordered else "none")
        kind = "points = mean over seeds, bars = ± 1 sd"
    base = runs[runs["aux"] == NO_AUX]
    dashed = False
    for (arch, host), b in base.groupby(["architecture", "host"]):
        if ((on["architecture"] == arch) & (on["host"] == host)).any():
            dashed = True
            ax.axhline(b[data.metric].mean(), ls="--", lw=1, color="gray")
            ax.annotate(f"{host} ({arch})", (0.01, b[data.metric].mean()), xycoords=("axes fraction", "data"),
                        fontsize=7, color="gray", va="bottom")
    ax.set_xlabel(name)
    ax.set_ylabel(ylabel)
    if ax.get_legend() is not None:
        sns.move_legend(ax, "best", fontsize=7, title_fontsize=7)
    fname = "miou_vs_" + re.sub(r"[^A-Za-z0-9_]+", "_", name)
    _save(fig, folder, fname)
    return fname, f"{ylabel} against {name} ({kind}" + ("; dashed = host without auxiliary task)" if dashed else ")")


def fig_class_gains(data: StudyData, folder: Path) -> tuple[str, str] | None:
    """Per-class paired gain of each auxiliary task over its host (bars = mean, whiskers = sd over
    common seeds). With ablation axes, each task's best setting by mean gain is shown. Drawn as
    `sns.catplot(kind="bar", orient="h", col="architecture", hue=task, errorbar="sd")` drew it."""
    _, sns = _plotting()
    runs = data.runs
    metrics = [iou_metric(CLASSES[i]) for i in data.classes]
    rows = []
    for _key, grp in runs[runs["aux"] != NO_AUX].groupby(data.group_cols, sort=False):
        base = runs[_baseline_mask(runs, grp.iloc[0])]
        if base.empty:
            continue
        a = grp.groupby("seed")[metrics + [data.metric]].mean()
        b = base.groupby("seed")[metrics + [data.metric]].mean()
        common = a.index.intersection(b.index)
        if common.empty:
            continue
        d = (a.loc[common] - b.loc[common])
        first = grp.iloc[0]
        setting = _label(grp.iloc[:1], data.axes, arch=False).iloc[0]
        rows.append((first["architecture"], first["host"], first["aux"], d[data.metric].mean(),
                     setting, d[metrics]))
    if not rows:
        return None
    best: dict[tuple, tuple] = {}
    for r in rows:
        k = r[:3]
        if k not in best or r[3] > best[k][3]:
            best[k] = r
    classes = [CLASSES[i] for i in data.classes]
    archs = list(dict.fromkeys(r[0] for r in best.values()))
    methods = list(dict.fromkeys(f"{r[1]} + {r[2]}" for r in best.values()))
    colors = {m: sns.desaturate(c, 0.75) for m, c in zip(methods, _palette(len(methods)))}
    dodge = len(best) > len(archs)  # two tasks' bars share a class row: side by side
    width = 0.8 / len(methods) if dodge else 0.8
    fig, axes = _facets([f"architecture = {a}" for a in archs], len(archs), height=0.25 * len(classes) + 1.5,
                        aspect=0.6)
    for ax, arch in zip(axes, archs):
        for r in (r for r in best.values() if r[0] == arch):
            k = methods.index(f"{r[1]} + {r[2]}")
            _bars(ax, r[5], [iou_metric(c) for c in classes], colors[methods[k]],
                  (width * k + width / 2 - 0.8 / 2) if dodge else 0.0, width)
        ax.set_yticks(range(len(classes)), classes)
        ax.yaxis.grid(False)
        ax.set_ylim(len(classes) - 0.5, -0.5)
        ax.axvline(0, color="black", lw=0.8)
    _facet_labels(axes, archs, len(archs), "IoU gain over host (points)", "",
                  ("gain", "class", "architecture = {}"))
    from matplotlib.patches import Rectangle

    _legend_right(fig, methods, colors, "method", [Rectangle((0, 0), 0, 0, facecolor=colors[m]) for m in methods])
    _save(fig, folder, "class_gains")
    caption = ("Per-class IoU gain over the host without auxiliary task (paired over common seeds; "
               "bar = mean, whisker = ± 1 sd)")
    if data.axes:
        caption += "; the setting with the best mean gain per task: " + "; ".join(
            f"{r[0]}: {r[4]}" for r in best.values() if " · " in r[4])
    return "class_gains", caption


def fig_curves(data: StudyData, history: pd.DataFrame, folder: Path, max_groups: int) -> list[tuple[str, str]]:
    """Training curves from the metric history: headline mIoU and each loss against iteration,
    mean over seeds with a ± 1 sd band. Drawn with matplotlib the way seaborn's `lineplot` and
    `relplot(kind="line", col=...)` draw them (same colours, lines, bands, facets and legend), from
    means and sds computed once (`_mean_sd`): seaborn's per-facet machinery cost twice the drawing."""
    plt, _ = _plotting()
    if history.empty:
        return []
    runs = data.runs.copy()
    runs["method"] = _label(runs, data.axes)
    ranking = runs.groupby("method")[data.metric].mean().sort_values(ascending=False)
    keep = list(ranking.index[:max_groups])
    note = f" ({max_groups} best of {len(ranking)} settings)" if len(ranking) > max_groups else ""
    hist = history.merge(runs[["run_id", "method"]], on="run_id")
    hist = hist[hist["method"].isin(keep)]
    colors = dict(zip(keep, _palette(len(keep))))
    out = []
    miou = hist[hist["key"] == data.metric]
    if not miou.empty:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        _lines(ax, miou, keep, colors)
        _proxies(ax, keep, colors, markeredgewidth=0.75, markeredgecolor="w")
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"target {METRIC_LABEL[data.metric]} (%)")
        ax.legend(fontsize=7, loc="best")
        _save(fig, folder, "curves_miou")
        out.append(("curves_miou", f"Target {METRIC_LABEL[data.metric]} during training{note} "
                                   "(mean over seeds, band = ± 1 sd)"))
    dense = hist[hist["key"].str.startswith(TRAIN)]
    if not dense.empty:
        return out + _dense_curves(dense, keep, colors, hist["run_id"].nunique(), note, folder)
    losses = hist[hist["key"].str.startswith("loss/")]
    if not losses.empty:
        keys = list(dict.fromkeys(losses["key"]))
        fig, axes = _facets([f"key = {k}" for k in keys], min(3, len(keys)), height=2.6, aspect=1.3, sharey=False)
        for ax, key in zip(axes, keys):
            _lines(ax, losses[losses["key"] == key], keep, colors)
        _facet_labels(axes, keys, min(3, len(keys)), "iteration", "loss", ("_x", "_y", "key = {}"))
        _proxies(axes[0], keep, colors)
        _legend_right(fig, keep, colors, "method")
        _save(fig, folder, "curves_loss")
        out.append(("curves_loss", f"Training losses (mean since the previous evaluation){note}"))
    return out


def smooth_window(points: int) -> int:
    """The rolling-mean window (logged points, odd) for a run of `points` logs: about 5%, at least 5."""
    return max(5, points // 20) | 1


def smoothed(dense: pd.DataFrame, window: int) -> pd.DataFrame:
    """`dense` (run_id, key, step, value) sorted by key, run and step, each run's values of each key
    replaced by their centred rolling mean over `window` points (fewer at both ends; NaN values left out
    of the means), as `Series.rolling(window, center=True, min_periods=1).mean()` per run and key, for
    all of them at once."""
    d = dense.sort_values(["key", "run_id", "step"], kind="stable").reset_index(drop=True)
    n = len(d)
    if n == 0:
        return d
    y = d["value"].to_numpy(float)
    ok = np.isfinite(y)
    total = np.concatenate([[0.0], np.cumsum(np.where(ok, y, 0.0))])
    count = np.concatenate([[0], np.cumsum(ok)])
    new = np.ones(n, bool)
    new[1:] = (d["key"].to_numpy()[1:] != d["key"].to_numpy()[:-1]) | (
        d["run_id"].to_numpy()[1:] != d["run_id"].to_numpy()[:-1])
    start = np.maximum.accumulate(np.where(new, np.arange(n), 0))  # first row of each row's series
    ends = np.append(np.flatnonzero(new)[1:], n)
    end = ends[np.cumsum(new) - 1]  # one past the last row of each row's series
    i = np.arange(n)
    lo = np.maximum(start, i - window // 2)
    hi = np.minimum(end, i + window // 2 + 1)
    k = count[hi] - count[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        d["value"] = np.where(k > 0, (total[hi] - total[lo]) / k, np.nan)
    return d


def _dense_curves(dense: pd.DataFrame, keep: list[str], colors: dict, n_runs: int, note: str,
                  folder: Path) -> list[tuple[str, str]]:
    """One figure (`curves_loss`) from the dense `train/` logs: a facet per loss, then the pseudo-label
    weight and the throughput; each run smoothed, the mean over seeds with a min-max band. One figure,
    not two: a figure's fixed cost (layout, legend, PNG and SVG) is most of the curves' time."""
    points = int(dense.groupby(["run_id", "key"]).size().max())
    steps = np.diff(dense.drop_duplicates(["run_id", "step"]).sort_values(["run_id", "step"])["step"].to_numpy())
    every = int(np.median(steps[steps > 0])) if (steps > 0).any() else 0
    window = smooth_window(points)
    smooth = smoothed(dense, window)
    smooth["key"] = smooth["key"].str.removeprefix(TRAIN)
    present = set(smooth["key"])
    keys = [k for k in dict.fromkeys(smooth["key"]) if k.startswith("loss/")] + [k for k in DENSE_STATS if k in present]
    if not keys:
        return []
    ncol = min(3, len(keys))
    fig, axes = _facets([f"key = {k}" for k in keys], ncol, height=2.6, aspect=1.3, sharey=False)
    for ax, key in zip(axes, keys):
        _dense_lines(ax, smooth[smooth["key"] == key], keep, colors)
    _facet_labels(axes, [DENSE_STATS.get(k, k) for k in keys], ncol, "iteration", "loss", ("_x", "_y", "key = {}"))
    for ax, key in zip(axes, keys):
        if key in DENSE_STATS:  # not a loss: its title names it and its unit
            ax.set_ylabel("")
    _proxies(axes[0], keep, colors)
    _legend_right(fig, keep, colors, "method")
    _save(fig, folder, "curves_loss")
    missing = n_runs - dense["run_id"].nunique()
    what = "Training losses" + (", pseudo-label weight and throughput" if keys[-1] in DENSE_STATS else "")
    return [("curves_loss", f"{what}{note}: logged every {every} iterations, each run smoothed with a centred "
                            f"rolling mean over {window} logs ({window * every} iterations; fewer at both ends); "
                            "line = mean over seeds, band = min-max over seeds"
                            + (f"; {missing} run(s) without these logs not shown" if missing else ""))]


def dense_bands(df: pd.DataFrame) -> pd.DataFrame:
    """Per (method, step): the mean, minimum and maximum over the runs' (smoothed) values and their count."""
    return df.groupby(["method", "step"])["value"].agg(["mean", "min", "max", "count"])


def _dense_lines(ax, df: pd.DataFrame, levels: list[str], colors: dict) -> None:
    """Per level (`method`): the mean over its runs of the (smoothed) values at each step, and a band
    from their minimum to their maximum where more than one run has the step."""
    stats = dense_bands(df)
    for level in levels:
        if level not in stats.index.get_level_values(0):
            continue
        sub = stats.loc[level]
        x = sub.index.to_numpy(float)
        line, = ax.plot(x, sub["mean"].to_numpy(), markeredgewidth=0.75, markeredgecolor="w")
        line.set_color(colors[level])
        if (sub["count"] > 1).any():
            several = (sub["count"] > 1).to_numpy()
            ax.fill_between(x, sub["min"].to_numpy(), sub["max"].to_numpy(), where=several,
                            color=line.get_color(), alpha=0.2)


# --------------------------------------------------------------------------------------------------
# seaborn's drawing, without its per-call machinery

def _palette(n: int) -> list[tuple[float, float, float]]:
    """seaborn's colours for n hue levels: the theme's palette when it has enough, else husl."""
    import seaborn as sns

    return list(sns.color_palette(None, n) if n <= len(sns.color_palette()) else sns.color_palette("husl", n))


def _mean_sd(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, mean and sd (NaN for one value) of `value` per `step`, as seaborn's lineplot computes them
    (rows without step or value dropped; each step's values summed in ascending order)."""
    d = df[["step", "value"]].dropna().sort_values(["step", "value"])
    x = d["step"].to_numpy(float)
    y = d["value"].to_numpy(float)
    steps, first, counts = np.unique(x, return_index=True, return_counts=True)
    if counts.max(initial=0) <= 1:  # one value per step: the values themselves, no band
        return x, y, np.full(len(x), np.nan)
    mean, sd = np.empty(len(steps)), np.full(len(steps), np.nan)
    for i, (a, n) in enumerate(zip(first, counts)):
        vals = y[a:a + n]
        mean[i] = vals.sum() / n  # pandas' Series.mean and .std (two-pass), operation for operation
        if n > 1:
            sd[i] = np.sqrt(((mean[i] - vals) ** 2).sum() / (n - 1))
    return steps, mean, sd


def _lines(ax, df: pd.DataFrame, levels: list[str], colors: dict) -> None:
    """One line per level (`method`) with a ± 1 sd band, as `sns.lineplot(errorbar="sd")` draws it."""
    for level in levels:
        sub = df[df["method"] == level]
        if sub.empty:
            continue
        x, mean, sd = _mean_sd(sub)
        line, = ax.plot(x, mean, markeredgewidth=0.75, markeredgecolor="w")
        line.set_color(colors[level])
        ax.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=0.2)


def _bars(ax, gains: pd.DataFrame, metrics: list[str], color, offset: float, width: float) -> None:
    """Horizontal bars of the mean gain per class (row i = metrics[i]) over seeds with ± 1 sd whiskers,
    as `sns.barplot(orient="h", errorbar="sd")` draws one hue level (dodged by `offset`)."""
    import matplotlib as mpl

    rows, means, sds = [], [], []
    for i, m in enumerate(metrics):
        vals = gains[m].dropna()
        if len(vals):
            rows.append(i + offset)
            means.append(vals.mean())
            sds.append(vals.std() if len(vals) > 1 else np.nan)
    pos = np.array(rows, float)
    ax.barh(y=pos - width / 2, width=means, height=width, align="edge", color=color, facecolor=color)
    for y, mean, sd in zip(pos, means, sds):
        ax.plot([mean - sd, mean + sd], [y, y], color=".26", linewidth=1.5 * mpl.rcParams["lines.linewidth"])


def _proxies(ax, levels: list[str], colors: dict, **kws) -> None:
    """seaborn's legend entries: an empty labelled line per level, added to the axes."""
    from matplotlib.lines import Line2D

    for level in levels:
        ax.add_artist(Line2D([], [], label=level, color=colors[level], **kws))


def _facets(titles: list[str], ncol: int, height: float, aspect: float, sharex: bool = True,
            sharey: bool = True):
    """A FacetGrid's figure: one axes per title in rows of ncol, each height x height * aspect inches,
    laid out (tight) with the titles, then the top and right spines removed and the inner tick labels
    of shared axes hidden, in FacetGrid's order (the spacing laid out later starts from this one)."""
    import matplotlib as mpl
    import matplotlib.pyplot as plt

    n = len(titles)
    nrow = -(-n // ncol)
    fig = plt.figure(figsize=(ncol * height * aspect, nrow * height))
    axes: list = []
    for i, title in enumerate(titles):
        shared = {"sharex": axes[0] if sharex else None, "sharey": axes[0] if sharey else None} if axes else {}
        axes.append(fig.add_subplot(nrow, ncol, i + 1, **shared))
        axes[-1].set_title(title, size=mpl.rcParams["axes.labelsize"])
    fig.tight_layout()
    for i, ax in enumerate(axes):
        ax.spines[["top", "right"]].set_visible(False)
        if sharex and i + ncol < n:  # not the bottom axes of its column
            for label in ax.get_xticklabels():
                label.set_visible(False)
            ax.xaxis.offsetText.set_visible(False)
            ax.xaxis.label.set_visible(False)
        if sharey and i % ncol:
            for label in ax.get_yticklabels():
                label.set_visible(False)
            ax.yaxis.offsetText.set_visible(False)
            ax.yaxis.label.set_visible(False)
    return fig, axes


def _facet_labels(axes: list, titles: list[str], ncol: int, xlabel: str, ylabel: str,
                  laid_out_as: tuple[str, str, str]) -> None:
    """Titles (at the axis-label size, as FacetGrid sets them) and axis labels on the outer axes.
    The grid is laid out (tight) with the labels seaborn's figure-level functions lay it out with
    (`laid_out_as`: x label, y label, title template; they name the data's columns) and relabelled
    after, as the report always did: the figures keep their proportions."""
    import matplotlib as mpl

    for texts in (laid_out_as, (xlabel, ylabel, "{}")):
        for i, (ax, title) in enumerate(zip(axes, titles)):
            ax.set_title(texts[2].format(title), size=mpl.rcParams["axes.labelsize"])
            ax.set_xlabel(texts[0] if i + ncol >= len(axes) else "")
            ax.set_ylabel(texts[1] if i % ncol == 0 else "")
        if texts is laid_out_as:
            axes[0].get_figure().tight_layout()


def _legend_right(fig, levels: list[str], colors: dict, title: str, handles: list | None = None) -> None:
    """FacetGrid.add_legend(legend_out=True): a legend right of the grid, the figure widened by its
    width and the axes kept left of it (the width measured without drawing the figure twice)."""
    import matplotlib as mpl
    from matplotlib.lines import Line2D

    handles = handles or [Line2D([], [], color=colors[level]) for level in levels]
    legend = fig.legend(handles, levels, scatterpoints=1, frameon=False, loc="center right")
    legend.set_title(title, prop={"size": mpl.rcParams["legend.title_fontsize"]})
    width = legend.get_window_extent(fig.canvas.get_renderer()).width / fig.dpi
    fig_width, fig_height = fig.get_size_inches()
    fig.set_size_inches(fig_width + width, fig_height)
    fig.subplots_adjust(right=1 - (0.01 + width / (fig_width + width)))
