"""Report figures (seaborn on the Agg backend; matplotlib and seaborn are imported when a figure is
drawn): mIoU against each ablation axis, per-class gain bars, training curves from the metric history.
Each figure is saved as PNG and SVG without timestamps, so a figure's files are reproducible.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from harness.labels import CLASSES
from harness.report.runs import KNOWN_ORDER, METRIC_LABEL, NO_AUX, StudyData, _sort, iou_metric
from harness.report.stats import _baseline_mask
from harness.report.tables import _label


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
    common seeds). With ablation axes, each task's best setting by mean gain is shown."""
    plt, sns = _plotting()
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
    frames = []
    for r in best.values():
        d = r[5].rename(columns={iou_metric(CLASSES[i]): CLASSES[i] for i in data.classes})
        long = d.reset_index().melt(id_vars="seed", var_name="class", value_name="gain")
        long["architecture"] = r[0]
        long["method"] = f"{r[1]} + {r[2]}"
        frames.append(long)
    long = pd.concat(frames, ignore_index=True)
    g = sns.catplot(data=long, kind="bar", y="class", x="gain", hue="method", col="architecture",
                    order=[CLASSES[i] for i in data.classes], errorbar="sd", orient="h",
                    height=0.25 * len(data.classes) + 1.5, aspect=0.6, legend_out=True)
    for ax in g.axes.flat:
        ax.axvline(0, color="black", lw=0.8)
    g.set_axis_labels("IoU gain over host (points)", "")
    g.set_titles("{col_name}")
    fig = g.figure
    _save(fig, folder, "class_gains")
    caption = ("Per-class IoU gain over the host without auxiliary task (paired over common seeds; "
               "bar = mean, whisker = ± 1 sd)")
    if data.axes:
        caption += "; the setting with the best mean gain per task: " + "; ".join(
            f"{r[0]}: {r[4]}" for r in best.values() if " · " in r[4])
    return "class_gains", caption


def fig_curves(data: StudyData, history: pd.DataFrame, folder: Path, max_groups: int) -> list[tuple[str, str]]:
    """Training curves from the metric history: headline mIoU and each loss against iteration,
    mean over seeds with a ± 1 sd band."""
    plt, sns = _plotting()
    if history.empty:
        return []
    runs = data.runs.copy()
    runs["method"] = _label(runs, data.axes)
    ranking = runs.groupby("method")[data.metric].mean().sort_values(ascending=False)
    keep = list(ranking.index[:max_groups])
    note = f" ({max_groups} best of {len(ranking)} settings)" if len(ranking) > max_groups else ""
    hist = history.merge(runs[["run_id", "method"]], on="run_id")
    hist = hist[hist["method"].isin(keep)]
    out = []
    miou = hist[hist["key"] == data.metric].copy()
    if not miou.empty:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        sns.lineplot(data=miou, x="step", y="value", hue="method", hue_order=keep, errorbar="sd", ax=ax)
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"target {METRIC_LABEL[data.metric]} (%)")
        ax.legend(fontsize=7, loc="best")
        _save(fig, folder, "curves_miou")
        out.append(("curves_miou", f"Target {METRIC_LABEL[data.metric]} during training{note} "
                                   "(mean over seeds, band = ± 1 sd)"))
    losses = hist[hist["key"].str.startswith("loss/")]
    if not losses.empty:
        g = sns.relplot(data=losses, x="step", y="value", hue="method", hue_order=keep, col="key",
                        col_wrap=min(3, losses["key"].nunique()), kind="line", errorbar="sd",
                        height=2.6, aspect=1.3, facet_kws={"sharey": False})
        g.set_axis_labels("iteration", "loss")
        g.set_titles("{col_name}")
        _save(g.figure, folder, "curves_loss")
        out.append(("curves_loss", f"Training losses (mean since the previous evaluation){note}"))
    return out
