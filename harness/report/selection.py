"""Which checkpoint a report's numbers come from, and how well label-free criteria would have chosen one.

Every run is evaluated several times (every `eval.interval` iterations and at the end). A selection rule
picks one evaluation per run; the tables report the metrics of that evaluation (`udabench report --select`):

- `last` (the default): each run's final evaluation;
- `oracle`: each run's evaluation with the best target mIoU (the study's headline metric). This is
  **oracle selection**: it uses the target labels that UDA assumes we do not have (TLlib keeps checkpoints
  this way silently), so it is labelled so wherever it appears, and is no UDA result;
- a criterion name (`entropy`, `im`, `teacher_agreement`, `consistency`; harness/engine/criteria.py, with
  their sources): each run's evaluation whose label-free criterion, logged as `criterion/<name>` at every
  evaluation, is best in its direction (`harness.config.CRITERIA`). A run that did not log the criterion
  (e.g. teacher agreement for a host without a teacher) keeps its last evaluation, and the table says how
  many did. Ties go to the later evaluation.

The selected evaluation's metrics are those logged at it; the checkpoint a user would deploy is the one kept
at that iteration (`checkpoint_keep`, `checkpoint/iter_<iteration>.pt`).

The selection table (`selection_table`) asks, for each criterion the runs logged: the mean target mIoU of
the evaluations it picks, against the last and the oracle-best evaluation, and its Spearman rank correlation
with target mIoU over all evaluations of the study's runs (the criterion oriented so that a positive
correlation means it ranks checkpoints as mIoU does), with a 95% percentile bootstrap interval whose
resampling unit is the run (runs drawn with replacement, each with all its evaluations; B = BOOTSTRAP).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from harness.config import CRITERIA
from harness.labels import CLASSES
from harness.report.runs import METRIC_LABEL, PERCENT_METRICS, ReportError, StudyData, iou_metric
from harness.report.tables import Cell, Table, _label_frame, gain_cell

PREFIX = "criterion/"
CRITERION_KEYS = tuple(PREFIX + c for c in CRITERIA)
RULES = ("last", "oracle", *CRITERIA)
BOOTSTRAP = 1000  # bootstrap resamples of the runs for the rank correlation's interval
SEED = 0          # of the bootstrap's generator: the same report gives the same interval


def check_rule(rule: str) -> str:
    """`rule` when it is a selection rule (RULES); ReportError naming the valid ones otherwise."""
    from harness.registry import closest

    if rule not in RULES:
        raise ReportError(f"--select {rule}: not a selection rule{closest(rule, list(RULES))}; expected "
                          f"last, oracle (uses target labels) or a label-free criterion: {', '.join(CRITERIA)}")
    return rule


def statement(rule: str, metric: str = "target_miou", fallback: int = 0, runs: int = 0) -> str:
    """The sentence each table and figure carries: which checkpoint its numbers come from."""
    if rule == "last":
        return "Checkpoint: the last evaluation of each run."
    if rule == "oracle":
        return (f"Checkpoint: **oracle selection**, each run's evaluation with the best target "
                f"{METRIC_LABEL[metric]}; it uses the target labels UDA assumes unavailable, so these "
                "numbers are no UDA result.")
    best = "lowest" if CRITERIA[rule] == "lower" else "highest"
    text = (f"Checkpoint: each run's evaluation with the {best} `{rule}` (label-free criterion on target "
            "training images, `--select`)")
    if fallback:
        text += f"; {fallback} of {runs} runs did not log it and keep their last evaluation"
    return text + "."


def short(rule: str) -> str:
    """The rule in a few words, for figure captions and metrics.json."""
    return {"last": "last evaluation", "oracle": "oracle selection (uses target labels)"}.get(
        rule, f"label-free criterion {rule}")


# --------------------------------------------------------------------------------------------------
# picking evaluations

def evaluations(history: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The metric history (run_id, key, step, value) as one row per (run_id, step), a column per key
    (NaN where a key was not logged at that step); the rows of steps without any of `keys` dropped."""
    h = history[history["key"].isin(keys)]
    if h.empty:
        return pd.DataFrame(columns=["run_id", "step", *keys])
    wide = h.pivot_table(index=["run_id", "step"], columns="key", values="value", aggfunc="last",
                         dropna=False).reset_index()
    wide.columns.name = None
    for k in keys:
        if k not in wide:
            wide[k] = np.nan
    return wide.sort_values(["run_id", "step"], kind="stable").reset_index(drop=True)


def picks(evals: pd.DataFrame, metric: str, rule: str) -> pd.Series:
    """run_id -> the step `rule` picks among the run's evaluations of `metric` (runs without the
    criterion: absent). Ties: the later step."""
    rows = evals[evals[metric].notna()]
    if rule == "last":
        return rows.groupby("run_id")["step"].max()
    key = metric if rule == "oracle" else PREFIX + rule
    rows = rows[rows[key].notna()] if key in rows else rows.iloc[0:0]
    if rows.empty:
        return pd.Series(dtype=float)
    score = rows[key] if rule == "oracle" or CRITERIA[rule] == "higher" else -rows[key]
    order = rows.assign(_score=score).sort_values(["run_id", "_score", "step"], kind="stable")
    return order.groupby("run_id")["step"].last()


def apply_rule(data: StudyData, rule: str, history: pd.DataFrame) -> tuple[StudyData, str]:
    """`data` with each run's IoU, mIoU and pixel accuracy taken from the evaluation `rule` picks (column
    `checkpoint`: its iteration), and the statement the tables carry. `history`: the metric history of
    the runs for every key of `rule_keys`."""
    check_rule(rule)
    metrics = rule_keys()
    evals = evaluations(history, metrics)
    chosen = picks(evals, data.metric, rule)
    runs = data.runs.copy()
    if rule != "last" and chosen.empty:
        raise ReportError(f"study '{data.name}': --select {rule}: no run logged `{PREFIX}{rule}` "
                          f"(runs made before udabench logged label-free criteria, or with "
                          f"selection.images 0); rules every run supports: last, oracle")
    last = picks(evals, data.metric, "last")
    step = runs["run_id"].map(chosen).astype(float)
    fallback = int(step.isna().sum())
    step = step.fillna(runs["run_id"].map(last).astype(float))
    at = evals.set_index(["run_id", "step"])
    accuracy = [m for m in metrics if not m.startswith(PREFIX)]
    known = step.notna().to_numpy()
    index = pd.MultiIndex.from_arrays([runs["run_id"][known], step[known]])
    values = at.reindex(index)[accuracy].to_numpy()
    for i, m in enumerate(accuracy):
        if m in runs:
            col = runs[m].to_numpy(dtype=float, copy=True)
            col[known] = values[:, i]
            runs[m] = col
    runs["checkpoint"] = step
    text = statement(rule, data.metric, fallback, len(runs))
    return dataclasses.replace(data, runs=runs), text


def rule_keys() -> list[str]:
    """The history a rule needs: every accuracy metric of the tables and the criteria."""
    return [*PERCENT_METRICS, *(iou_metric(c) for c in CLASSES), *CRITERION_KEYS]


# --------------------------------------------------------------------------------------------------
# the selection table

def _ranks(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average ranks (ties averaged, as scipy.stats.rankdata's 'average') of the values `x` (n) repeated
    `w` times (B x n weights, one row per sample): row b ranks the data in which point i appears w[b, i]
    times, each copy of a point getting the same rank. (scipy.stats costs 0.7 s to import.)"""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])  # the groups of equal values
    ws = w[:, order]
    size = np.add.reduceat(ws, starts, axis=1)
    rank = np.cumsum(size, axis=1) - size + (size + 1) / 2   # the copies before the group, then the middle
    out = np.empty_like(ws, dtype=float)
    out[:, order] = rank[:, np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(xs)]))]
    return out


def _weighted_spearman(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row's data (`_ranks`): the Pearson correlation of the average ranks, each
    point counted w times; NaN where either side is constant."""
    rx, ry = _ranks(x, w), _ranks(y, w)
    total = w.sum(1, keepdims=True)
    dx = rx - (w * rx).sum(1, keepdims=True) / total
    dy = ry - (w * ry).sum(1, keepdims=True) / total
    den = np.sqrt((w * dx * dx).sum(1) * (w * dy * dy).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (w * dx * dy).sum(1) / den, np.nan)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (ties averaged); NaN when either is constant or with fewer than 3 pairs."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        return np.nan
    return float(_weighted_spearman(x, y, np.ones((1, len(x))))[0])


def bootstrap_rhos(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n: int = BOOTSTRAP,
                   seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Spearman's rho of `n` bootstrap resamples of the groups (runs): each resample draws as many groups as
    there are, uniformly with replacement, every drawn group bringing all its pairs. Returns (the rhos,
    the number of times each group was drawn: n x groups, in the order of np.unique(groups))."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    labels, inverse = np.unique(groups, return_inverse=True)
    counts = np.random.default_rng(seed).multinomial(len(labels), np.full(len(labels), 1 / len(labels)), size=n)
    return _weighted_spearman(x, y, counts[:, inverse].astype(float)), counts


def bootstrap_spearman(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n: int = BOOTSTRAP,
                       seed: int = SEED) -> tuple[float, float]:
    """95% percentile interval of Spearman's rho over `n` resamples of the groups (`bootstrap_rhos`);
    (NaN, NaN) with fewer than 2 groups."""
    if len(np.unique(groups)) < 2:
        return np.nan, np.nan
    rhos, _ = bootstrap_rhos(x, y, groups, n, seed)
    rhos = rhos[~np.isnan(rhos)]
    if not len(rhos):
        return np.nan, np.nan
    return float(np.quantile(rhos, 0.025)), float(np.quantile(rhos, 0.975))


def _paired_interval(diff: np.ndarray) -> tuple[float, float, float]:
    """Mean of `diff` with a 95% t-interval (NaN below 2 values)."""
    from scipy.special import stdtrit

    diff = diff[~np.isnan(diff)]
    if not len(diff):
        return np.nan, np.nan, np.nan
    mean = float(diff.mean())
    if len(diff) < 2:
        return mean, np.nan, np.nan
    half = float(stdtrit(len(diff) - 1, 0.975) * diff.std(ddof=1) / np.sqrt(len(diff)))
    return mean, mean - half, mean + half


def selection_numbers(data: StudyData, history: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per rule: last, oracle, each criterion some run logged; one row per run: the step and
    headline metric each rule picks). Numbers are the headline metric (target mIoU, %)."""
    metric = data.metric
    evals = evaluations(history, [metric, *CRITERION_KEYS])
    evals = evals[evals["run_id"].isin(set(data.runs["run_id"])) & evals[metric].notna()]
    at = evals.set_index(["run_id", "step"])[metric]
    per_run = data.runs[["run_id", "trial_id"]].copy()
    logged = [c for c in CRITERIA if evals[PREFIX + c].notna().any()]
    for rule in ("last", "oracle", *logged):
        chosen = picks(evals, metric, rule)
        per_run[f"{rule}:step"] = per_run["run_id"].map(chosen)
        index = pd.MultiIndex.from_arrays([per_run["run_id"], per_run[f"{rule}:step"]])
        per_run[f"{rule}:{metric}"] = at.reindex(index).to_numpy()
    last = per_run[f"last:{metric}"].to_numpy(float)
    oracle = per_run[f"oracle:{metric}"].to_numpy(float)
    rows = []
    for rule in ("last", "oracle", *logged):
        value = per_run[f"{rule}:{metric}"].to_numpy(float)
        have = ~np.isnan(value)
        gain, lo, hi = _paired_interval(value - last) if rule != "last" else (np.nan, np.nan, np.nan)
        row = {"rule": rule, "direction": {"last": "–", "oracle": "higher"}.get(rule, CRITERIA.get(rule)),
               "label_free": rule != "oracle", "runs": int(have.sum()),
               f"{metric}:mean": float(np.nanmean(value)) if have.any() else np.nan,
               f"{metric}:gain_vs_last": gain, "gain_ci_low": lo, "gain_ci_high": hi,
               "gap_to_oracle": float(np.nanmean(oracle[have] - value[have])) if have.any() else np.nan,
               "picks_oracle": float(np.mean(per_run[f"{rule}:step"][have] == per_run["oracle:step"][have]))
               if have.any() else np.nan,
               "spearman": np.nan, "spearman_ci_low": np.nan, "spearman_ci_high": np.nan, "evaluations": 0}
        if rule in logged:
            both = evals[evals[PREFIX + rule].notna()]
            x = both[PREFIX + rule].to_numpy(float) * (1 if CRITERIA[rule] == "higher" else -1)
            y = both[metric].to_numpy(float)
            row["spearman"] = spearman(x, y)
            row["spearman_ci_low"], row["spearman_ci_high"] = bootstrap_spearman(x, y, both["run_id"].to_numpy())
            row["evaluations"] = len(both)
        rows.append(row)
    return pd.DataFrame(rows), per_run


def selection_table(data: StudyData, history: pd.DataFrame) -> tuple[Table, pd.DataFrame]:
    """The selection table of a study, and per run the evaluation (step) each rule picks and the headline
    metric there (`tables/selection_runs.csv`)."""
    metric, label = data.metric, METRIC_LABEL[data.metric]
    numbers, per_run = selection_numbers(data, history)
    name = {"last": "last evaluation", "oracle": "oracle: best target " + label + " (uses target labels)"}
    disp = pd.DataFrame({
        "rule": [name.get(r, r) for r in numbers["rule"]],
        "better": numbers["direction"],
        "runs": numbers["runs"].astype(str),
        f"{label} of the pick": [Cell("–", "--") if np.isnan(v) else Cell(f"{v:.1f}", f"{v:.1f}")
                                 for v in numbers[f"{metric}:mean"]],
        "Δ vs last [95% CI]": [
            Cell("–", "--") if r["rule"] == "last" else
            gain_cell(r[f"{metric}:gain_vs_last"], r["gain_ci_low"], r["gain_ci_high"], int(r["runs"]))
            for _, r in numbers.iterrows()],
        "gap to oracle": ["–" if np.isnan(v) else f"{v:.1f}" for v in numbers["gap_to_oracle"]],
        "picks the oracle's": ["–" if np.isnan(v) else f"{100 * v:.0f}%" for v in numbers["picks_oracle"]],
        "Spearman ρ [95% CI]": [_rho_cell(r) for _, r in numbers.iterrows()],
    })
    logged = [r for r in numbers["rule"] if r in CRITERIA]
    evals = int(per_run["last:step"].notna().sum())
    note = (f"Which evaluation (checkpoint) of each run a rule picks, and the target {label} (%) there, "
            f"mean over the study's {evals} runs; Δ: paired difference to the last evaluation over runs, "
            "95% t-interval; gap to oracle: mean shortfall from each run's best evaluation; picks the "
            "oracle's: share of runs where the rule picks the best evaluation. The oracle row uses target "
            "labels (oracle selection), the others do not. Spearman ρ: rank correlation between the "
            f"criterion (oriented so that higher is better) and target {label} over all evaluations of the "
            f"study's runs, with a 95% percentile bootstrap interval ({BOOTSTRAP} resamples; resampling "
            "unit: runs). Criteria (harness/engine/criteria.py): entropy (lower is better), im (higher), "
            "teacher_agreement (higher; hosts with an EMA teacher), consistency (higher), computed on "
            "target training images without their labels.")
    if not logged:
        note += (" **No label-free criteria were logged by these runs** (no `criterion/*` metrics: runs "
                 "made before udabench logged them, or with `selection.images: 0`); only the last and the "
                 "oracle evaluation can be compared.")
    table = Table("selection", "Checkpoint selection", disp, numbers, note, ["rule", "better"])
    detail = pd.concat([per_run[["run_id", "trial_id"]], _label_frame(data.runs, data),
                        per_run.drop(columns=["run_id", "trial_id"])], axis=1)
    return table, detail


def _rho_cell(r: pd.Series) -> Cell:
    if np.isnan(r["spearman"]):
        return Cell("–", "--")
    if np.isnan(r["spearman_ci_low"]):
        text = f"{r['spearman']:+.2f} (n={int(r['evaluations'])})"
    else:
        text = (f"{r['spearman']:+.2f} [{r['spearman_ci_low']:+.2f}, {r['spearman_ci_high']:+.2f}] "
                f"(n={int(r['evaluations'])})")
    return Cell(text, text)
