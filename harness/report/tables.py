"""Report tables: the statistics formatted as Markdown, LaTeX and CSV.

`Cell` and `Table` (one display frame, one numeric frame); the cell formats (`mean_std_cell`,
`gain_cell`, `tex_escape`); the main, gains, host, ablation and cost tables; the labels of groups
(`_label`) that figures and the page share; `_md_table`, a table as the page embeds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.labels import CLASSES
from harness.report.runs import COST_METRICS, LOAD_METRIC, METRIC_LABEL, NO_AUX, StudyData, iou_metric
from harness.report.stats import LOWER_BOUND

_TEX = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
        "–": "--", "±": r"$\pm$", "×": r"$\times$", "Δ": r"$\Delta$", "ρ": r"$\rho$"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


@dataclass
class Cell:
    """A table cell: text for Markdown/CSV and for LaTeX."""

    md: str
    tex: str

    def __str__(self) -> str:
        return self.md


def _num(x: float, signed: bool = False, digits: int = 1) -> str:
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def mean_std_cell(mean: float, std: float, n: int, n_full: int, digits: int = 1) -> Cell:
    """'45.2 ± 1.3', with '(n=2)' whenever the cell has fewer values than its row has runs."""
    if not n or np.isnan(mean):
        return Cell("–", "--")
    note = f" (n={n})" if n < n_full else ""
    if n > 1 and not np.isnan(std):
        return Cell(f"{_num(mean, digits=digits)} ± {_num(std, digits=digits)}{note}",
                    f"{_num(mean, digits=digits)} $\\pm$ {_num(std, digits=digits)}{note}")
    return Cell(f"{_num(mean, digits=digits)}{note}", f"{_num(mean, digits=digits)}{note}")


def gain_cell(mean: float, lo: float, hi: float, n: int, digits: int = 1) -> Cell:
    """'+2.3 [-0.4, +5.0] (n=3)'; no interval below two pairs; '–' without a host baseline."""
    if not n or np.isnan(mean):
        return Cell("–", "--")
    if n < 2 or np.isnan(lo):
        return Cell(f"{_num(mean, True, digits)} (n={n}, no CI)",
                    f"{_num(mean, True, digits)} (n={n}, no CI)")
    text = f"{_num(mean, True, digits)} [{_num(lo, True, digits)}, {_num(hi, True, digits)}] (n={n})"
    return Cell(text, text)


@dataclass
class Table:
    """One report table: a display frame of Cells/strings plus a numeric frame for CSV."""

    name: str
    title: str
    display: pd.DataFrame
    numeric: pd.DataFrame
    note: str = ""
    labels: Sequence[str] = ()      # left-aligned text columns (the rest are numbers)
    # which checkpoint (evaluation) of each run the numbers come from (report/selection.py `statement`);
    # every written file says it: a line under the Markdown table, a LaTeX comment, a CSV column
    checkpoint: str = ""
    checkpoint_short: str = ""      # the rule in a few words: the CSV column `checkpoint`

    def markdown(self) -> str:
        frame = self.display.map(str)
        return frame.to_markdown(index=False, disable_numparse=True)

    def latex(self) -> str:
        frame = self.display.map(lambda c: c.tex if isinstance(c, Cell) else tex_escape(c))
        frame.columns = [tex_escape(c) for c in frame.columns]
        fmt = "".join("l" if c in self.labels else "r" for c in self.display.columns)
        body = frame.to_latex(index=False, escape=False, column_format=fmt)
        said = f"% {self.checkpoint.replace('**', '')}\n" if self.checkpoint else ""
        return f"% {self.title}\n{said}% requires \\usepackage{{booktabs}}\n{body}"

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        said = f"\n{self.checkpoint}\n" if self.checkpoint else ""
        (folder / f"{self.name}.md").write_text(self.markdown() + "\n" + said)
        (folder / f"{self.name}.tex").write_text(self.latex())
        numeric = self.numeric.assign(checkpoint=self.checkpoint_short) if self.checkpoint_short else self.numeric
        numeric.to_csv(folder / f"{self.name}.csv", index=False, float_format="%.10g")


def _label_frame(df: pd.DataFrame, data: StudyData) -> pd.DataFrame:
    out = pd.DataFrame(index=df.index)
    out["architecture"] = df["architecture"]
    out["host"] = df["host"]
    out["aux task"] = df["aux"].map(lambda a: "–" if a == NO_AUX else a)
    for a in data.axes:
        out[a[len("axis:"):]] = df[a].map(_short)
    return out


def _short(value: str) -> str:
    """An axis value for display: a sampled float such as 1.252065381499947 as 1.252."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if len(value) > 6 and "." in value else value


def _labels(data: StudyData) -> list[str]:
    return ["architecture", "host", "aux task", *(a[len("axis:"):] for a in data.axes)]


def _gain_lookup(gains: pd.DataFrame, data: StudyData) -> dict[tuple, pd.Series]:
    if gains.empty:
        return {}
    return {tuple(r[c] for c in data.group_cols): r for _, r in gains.iterrows()}


def _label(df: pd.DataFrame, cols: Sequence[str], arch: bool = True) -> pd.Series:
    """'deeplabv2/resnet18 · dacs + mfm · mask_ratio=0.4' (axes without a value are left out)."""
    out = df["host"] + df["aux"].map(lambda a: "" if a == NO_AUX else f" + {a}")
    if arch:
        out = df["architecture"] + " · " + out
    for c in cols:
        out = out + df[c].map(lambda v, c=c: "" if v == "–" else f" · {c[len('axis:'):]}={_short(v)}")
    return out


def main_table(data: StudyData, summary: pd.DataFrame, gains: pd.DataFrame) -> Table:
    class_metrics = [iou_metric(CLASSES[i]) for i in data.classes]
    means = [data.metric] + (["target_miou13"] if data.protocol == "16" else [])
    n_full = int(summary["runs"].max())
    disp = _label_frame(summary, data)
    disp["n"] = summary["runs"].astype(int).astype(str)
    for m, c in zip(class_metrics, data.classes):
        disp[CLASSES[c]] = [mean_std_cell(r[f"{m}:mean"], r[f"{m}:std"], int(r[f"{m}:n"]), int(r["runs"]))
                            for _, r in summary.iterrows()]
    for m in means:
        disp[METRIC_LABEL[m]] = [mean_std_cell(r[f"{m}:mean"], r[f"{m}:std"], int(r[f"{m}:n"]), int(r["runs"]))
                                 for _, r in summary.iterrows()]
    lookup = _gain_lookup(gains, data)
    col = f"Δ {METRIC_LABEL[data.metric]} vs host [95% CI]"
    cells, gnum = [], {"gain": [], "ci_low": [], "ci_high": [], "pairs": []}
    for _, r in summary.iterrows():
        g = lookup.get(tuple(r[c] for c in data.group_cols))
        if g is None or not g.get("pairs"):
            cells.append(Cell("–", "--"))
            for k in gnum:
                gnum[k].append(np.nan if k != "pairs" else 0)
            continue
        m = data.metric
        cells.append(gain_cell(g[f"{m}:gain"], g[f"{m}:ci_low"], g[f"{m}:ci_high"], int(g[f"{m}:gain_n"])))
        gnum["gain"].append(g[f"{m}:gain"])
        gnum["ci_low"].append(g[f"{m}:ci_low"])
        gnum["ci_high"].append(g[f"{m}:ci_high"])
        gnum["pairs"].append(int(g[f"{m}:gain_n"]))
    has_host = bool((data.runs["aux"] == NO_AUX).any())
    if has_host:
        disp[col] = cells
    numeric = summary[[*data.group_cols, "runs", "seeds"]].copy()
    for m in [*class_metrics, *means]:
        for stat in ("mean", "std", "n"):
            numeric[f"{m}:{stat}"] = summary[f"{m}:{stat}"]
    for k, v in gnum.items():
        numeric[f"{data.metric}:{k if k != 'pairs' else 'gain_n'}"] = v
    proto = {"19": "19 Cityscapes classes", "16": "SYNTHIA 16-class protocol (mIoU16; mIoU13 drops "
             "wall, fence, pole)", "13": "SYNTHIA 13-class protocol"}[data.protocol]
    note = (f"Target IoU (%) at that evaluation, {proto}; mean ± std over seeds, n = runs (seeds) per row "
            f"(at most {n_full}); '(n=k)' marks a cell computed from fewer runs than its row (a class "
            f"absent from some runs' ground truth and predictions). Δ: paired "
            f"difference to the same architecture and host without an auxiliary task over their common "
            f"seeds, with a 95% t-interval.")
    if not has_host:
        note += (" This study has no runs of a host without an auxiliary task, so it shows no gains "
                 "(the main comparison study has them).")
    return Table("main", "Main comparison", disp, numeric, note, _labels(data))


def gains_table(data: StudyData, gains: pd.DataFrame) -> Table:
    metrics = [data.metric] + (["target_miou13"] if data.protocol == "16" else [])
    if gains.empty or not (data.runs["aux"] == NO_AUX).any():  # nothing to pair with
        return Table("gains", "Paired gain over the host", pd.DataFrame(), pd.DataFrame())
    disp = _label_frame(gains, data)
    disp["pairs"] = gains["pairs"].astype(int).astype(str)
    disp["common seeds"] = gains["common_seeds"].replace("", "–")
    for m in metrics:
        if f"{m}:gain" not in gains:
            continue
        disp[f"Δ {METRIC_LABEL[m]}"] = [
            gain_cell(r[f"{m}:gain"], r[f"{m}:ci_low"], r[f"{m}:ci_high"], int(r[f"{m}:gain_n"]))
            for _, r in gains.iterrows()]
    unpaired = gains.get("seeds_only_aux", pd.Series("", gains.index)).fillna("")
    unpaired_h = gains.get("seeds_only_host", pd.Series("", gains.index)).fillna("")
    disp["unpaired seeds"] = [
        ", ".join(x for x in (f"aux: {a}" if a else "", f"host: {h}" if h else "") if x) or "–"
        for a, h in zip(unpaired, unpaired_h)]
    note = ("Paired difference (auxiliary task minus host, same architecture) over the seeds both "
            "have; mean with a 95% t-interval (t distribution, n-1 degrees of freedom). Seeds run "
            "by only one side are listed and not used.")
    return Table("gains", "Paired gain over the host", disp, gains.copy(), note,
                 [*_labels(data), "common seeds", "unpaired seeds"])


def host_table(data: StudyData, gains: pd.DataFrame) -> Table:
    m = data.metric
    if gains.empty:
        return Table("hosts", f"Paired gain over {LOWER_BOUND}", pd.DataFrame(), pd.DataFrame())
    disp = _label_frame(gains.assign(aux=NO_AUX), data)
    disp["pairs"] = gains["pairs"].astype(int).astype(str)
    disp[f"Δ {METRIC_LABEL[m]} vs {LOWER_BOUND} [95% CI]"] = [
        gain_cell(r[f"{m}:gain"], r[f"{m}:ci_low"], r[f"{m}:ci_high"], int(r[f"{m}:gain_n"]))
        for _, r in gains.iterrows()]
    note = (f"Each host minus {LOWER_BOUND} (same architecture and axes), paired over the seeds both "
            "have; mean with a 95% t-interval. An interval above 0 is a gain beyond seed noise.")
    return Table("hosts", f"Paired gain over {LOWER_BOUND}", disp, gains.copy(), note, _labels(data))


def ablation_table(data: StudyData, summary: pd.DataFrame, gains: pd.DataFrame) -> Table:
    m = data.metric
    disp = _label_frame(summary, data)
    disp["n"] = summary["runs"].astype(int).astype(str)
    disp[METRIC_LABEL[m]] = [mean_std_cell(r[f"{m}:mean"], r[f"{m}:std"], int(r[f"{m}:n"]), int(r["runs"]))
                             for _, r in summary.iterrows()]
    lookup = _gain_lookup(gains, data)
    if (data.runs["aux"] == NO_AUX).any():
        disp["Δ vs host [95% CI]"] = [
            gain_cell(g[f"{m}:gain"], g[f"{m}:ci_low"], g[f"{m}:ci_high"], int(g[f"{m}:gain_n"]))
            if (g := lookup.get(tuple(r[c] for c in data.group_cols))) is not None and g.get("pairs")
            else Cell("–", "--") for _, r in summary.iterrows()]
    numeric = summary[[*data.group_cols, "runs", "seeds", f"{m}:mean", f"{m}:std", f"{m}:n"]].copy()
    axes = ", ".join(a[len("axis:"):] for a in data.axes)
    note = (f"{METRIC_LABEL[m]} (%) against the study's axes ({axes}); mean ± std over seeds. Host-only "
            f"rows have no value ('–') for axes of the auxiliary task.")
    return Table("ablation", f"Ablation over {axes}", disp, numeric, note, _labels(data))


def cost_display(data: StudyData, cost: pd.DataFrame) -> Table:
    disp = _label_frame(cost, data)
    disp["n"] = cost["runs"].astype(int).astype(str)
    spec = (("step_time", "step time (s)", 3), ("throughput", "images/s", 2),
            ("peak_mem_mb", "peak memory (MB)", 0))
    for m, label, digits in spec:
        disp[label] = [mean_std_cell(r[f"{m}:mean"], r[f"{m}:std"], int(r[f"{m}:n"]), int(r["runs"]), digits)
                       for _, r in cost.iterrows()]
        if (data.runs["aux"] == NO_AUX).any():
            disp[f"{label.split(' (')[0]} × host"] = [
                "–" if np.isnan(r[f"{m}:ratio"]) else f"{r[f'{m}:ratio']:.2f}" for _, r in cost.iterrows()]
    keep = [*data.group_cols, "runs", *(f"{m}:{s}" for m in COST_METRICS for s in ("mean", "std", "n", "ratio"))]
    note = ("Training cost per method: mean ± std over runs; '× host' is the ratio of means to the same "
            "architecture and host without an auxiliary task (timings depend on machine load).")
    if f"{LOAD_METRIC}:mean" in cost:
        disp["load (5 min)"] = ["–" if np.isnan(r[f"{LOAD_METRIC}:mean"]) else
                                f"{r[f'{LOAD_METRIC}:mean']:.1f} (max {r[f'{LOAD_METRIC}:max']:.1f})"
                                for _, r in cost.iterrows()]
        keep += [f"{LOAD_METRIC}:mean", f"{LOAD_METRIC}:max"]
        note += (" Load: the machine's 5-minute load average at a run's last evaluation, mean and max over "
                 "runs; timings taken under a load above the machine's CPU count compare poorly.")
    return Table("cost", "Training cost relative to the host", disp, cost[keep].copy(), note,
                 _labels(data))


def _md_table(t: Table) -> str:
    return "\n".join([t.markdown(), "", f"{t.checkpoint} {t.note}".strip(), "",
                      f"Files: [Markdown](tables/{t.name}.md) · [LaTeX](tables/{t.name}.tex) · "
                      f"[CSV](tables/{t.name}.csv)"])
