"""Statistics over a study's tidy runs: numbers, not formatting.

Mean, std and n per group (`summarize`); the paired gain of each auxiliary task over its host without
one over common seeds with a 95% t-interval (`paired_gains`, `host_gains` for hosts against
`source_only`); training cost relative to the host (`cost_table`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from harness.report.runs import COST_METRICS, LOAD_METRIC, NO_AUX, StudyData


def summarize(data: StudyData, metrics: Sequence[str]) -> pd.DataFrame:
    """mean, std (ddof 1) and n per group and metric: columns `<metric>:mean|std|n`."""
    g = data.runs.groupby(data.group_cols, sort=False, dropna=False)[list(metrics)]
    mean, std, n = g.mean(), g.std(ddof=1), g.count()
    out = pd.concat({"mean": mean, "std": std, "n": n}, axis=1)
    out.columns = [f"{m}:{stat}" for stat, m in out.columns]
    out["runs"] = data.runs.groupby(data.group_cols, sort=False, dropna=False).size()
    out["seeds"] = data.runs.groupby(data.group_cols, sort=False, dropna=False)["seed"].agg(
        lambda s: ",".join(dict.fromkeys(s)))
    return out.reset_index()


def _baseline_mask(runs: pd.DataFrame, row: pd.Series) -> pd.Series:
    return ((runs["architecture"] == row["architecture"]) & (runs["host"] == row["host"])
            & (runs["aux"] == NO_AUX))


def paired_gains(data: StudyData, metrics: Sequence[str]) -> pd.DataFrame:
    """For every group with an auxiliary task: the difference to its host without one (same
    architecture), paired over the seeds both have; mean, std, n and a 95% t-interval per metric.
    Runs repeated with one seed are averaged first."""

    runs = data.runs
    metrics = list(metrics)
    rows = []
    hosts = {k: g.groupby("seed")[metrics].mean()
             for k, g in runs[runs["aux"] == NO_AUX].groupby(["architecture", "host"])}
    for key, grp in runs[runs["aux"] != NO_AUX].groupby(data.group_cols, sort=False, dropna=False):
        rec: dict[str, Any] = dict(zip(data.group_cols, key if isinstance(key, tuple) else (key,)))
        b = hosts.get((rec["architecture"], rec["host"]))
        if b is None:  # no run of this host without an auxiliary task
            rows.append({**rec, "pairs": 0, "common_seeds": "", **{
                f"{m}:{k}": (0 if k == "gain_n" else np.nan)
                for m in metrics for k in ("gain", "gain_std", "gain_n", "ci_low", "ci_high")}})
            continue
        a = grp.groupby("seed")[metrics].mean()
        rec.update(_paired(a, b, metrics))
        rec["seeds_only_host"] = rec.pop("seeds_only_base")
        rows.append(rec)
    cols = [*data.group_cols, "pairs", "common_seeds"]
    return pd.DataFrame(rows, columns=None if rows else cols)


def _paired(a: pd.DataFrame, b: pd.DataFrame, metrics: list[str]) -> dict[str, Any]:
    """a - b over their common seeds (rows = seeds): mean, std, n and a 95% t-interval per metric.
    The t quantile is `scipy.special.stdtrit`, which `scipy.stats.t.ppf` calls (the same numbers;
    importing scipy.stats costs 0.7 s)."""
    from scipy.special import stdtrit

    common = a.index.intersection(b.index)
    diff = a.loc[common] - b.loc[common]
    n = diff.count()
    mean, sd = diff.mean(), diff.std(ddof=1)
    half = stdtrit(np.maximum(n - 1, 1).to_numpy(), 0.975) * sd / np.sqrt(n)
    half[n < 2] = np.nan
    rec: dict[str, Any] = dict(pairs=len(common), common_seeds=",".join(map(str, common)),
                               seeds_only_aux=",".join(map(str, a.index.difference(b.index))),
                               seeds_only_base=",".join(map(str, b.index.difference(a.index))))
    for m in metrics:
        rec.update({f"{m}:gain": mean[m], f"{m}:gain_std": sd[m], f"{m}:gain_n": int(n[m]),
                    f"{m}:ci_low": mean[m] - half[m], f"{m}:ci_high": mean[m] + half[m]})
    return rec


LOWER_BOUND = "source_only"


def host_gains(data: StudyData, metrics: Sequence[str]) -> pd.DataFrame:
    """For a study that varies the host: every other host without an auxiliary task against
    `source_only` on the same architecture (and the same other axes), paired over common seeds."""
    runs = data.runs[data.runs["aux"] == NO_AUX]
    if runs.empty or runs["host"].nunique() < 2 or LOWER_BOUND not in set(runs["host"]):
        return pd.DataFrame()
    metrics = list(metrics)
    rest = [c for c in data.group_cols if c != "host"]
    rows = []
    for key, grp in runs.groupby(rest, sort=False, dropna=False):
        rec0 = dict(zip(rest, key if isinstance(key, tuple) else (key,)))
        base = grp[grp["host"] == LOWER_BOUND]
        if base.empty:
            continue
        b = base.groupby("seed")[metrics].mean()
        for host, hg in grp[grp["host"] != LOWER_BOUND].groupby("host", sort=False):
            rows.append({**rec0, "host": host, **_paired(hg.groupby("seed")[metrics].mean(), b, metrics)})
    return pd.DataFrame(rows)


def cost_table(data: StudyData) -> pd.DataFrame:
    """Mean cost per group and its ratio to the host without an auxiliary task (ratio of means)."""
    s = summarize(data, COST_METRICS)
    runs = data.runs
    if LOAD_METRIC in runs and runs[LOAD_METRIC].notna().any():  # the load the timings were taken under
        load = summarize(data, (LOAD_METRIC,))
        s[f"{LOAD_METRIC}:mean"] = load[f"{LOAD_METRIC}:mean"].to_numpy()
        s[f"{LOAD_METRIC}:max"] = runs.groupby(data.group_cols, sort=False, dropna=False)[LOAD_METRIC].max().to_numpy()
    base = runs[runs["aux"] == NO_AUX].groupby(["architecture", "host"])[list(COST_METRICS)].mean()
    ref = base.reindex(pd.MultiIndex.from_frame(s[["architecture", "host"]])).to_numpy()
    for i, m in enumerate(COST_METRICS):
        s[f"{m}:ratio"] = s[f"{m}:mean"].to_numpy() / ref[:, i]
    return s
