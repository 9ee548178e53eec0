"""Reports: the finished MLflow runs of a study -> pandas -> tables, figures and one page per study.

`harness.report.page.build_reports(studies, ReportOptions(...))` reads every run of each study
(experiment = study name) at once (the frame of `mlflow.search_runs`, read with plain queries on
MLflow's SQL store), refuses to mix runs of different data (`data_hash`), code (`git_commit`) or
scale unless told to, and writes under `<out>/<study>/` (several studies side by side in worker
processes when CPUs are idle, `ReportOptions.jobs` / `--jobs`):

- `tables/main.{md,tex,csv}`: rows = architecture x host x auxiliary task (x the study's other axes),
  columns = per-class IoU and mIoU (19 classes; 16 and mIoU16/mIoU13 for SYNTHIA protocols),
  mean +- std over seeds with n, and the paired gain over the host without an auxiliary task;
- `tables/gains.{md,tex,csv}`: that paired difference over common seeds with a 95% t-interval;
- `tables/ablation.{md,tex,csv}`: the headline mIoU against the study's varied `axis.*` tags;
- `tables/cost.{md,tex,csv}`: step time, throughput and peak memory relative to the host;
- `tables/trials.csv`: one row per run (the numbers every table is computed from);
- `figures/*.{png,svg}` (seaborn's look, Agg): mIoU against each ablation axis with seed bands,
  per-class gain bars, training curves from the metric history;
- `README.md`, embedding all of the above so GitHub renders it,

and `<out>/metrics.json` (headline numbers per study) for `dvc metrics`. A study folder is built in a
temporary folder and renamed into place at the end, so a failed report never leaves half a page.
IoU, mIoU and pixel accuracy are in percent, as the training engine logs them.

The modules, each importing only those above it (runs <- stats <- tables <- figures, page):

- `runs.py`: MLflow runs -> one tidy pandas frame per study: the shared names (`HEADLINE`,
  `METRIC_LABEL`, ...), `ReportError`, `ReportOptions`, `StudyData`, `load_runs` (columns sorted by
  name), `metric_history`, `select` (the runs a study file stands for) and `tidy` (finished runs,
  refusal of mixed runs);
- `stats.py`: the numbers: `summarize` (mean, std, n per group), `paired_gains` and `host_gains`
  (paired over common seeds, 95% t-interval), `cost_table`;
- `tables.py`: the numbers formatted: `Cell`, `Table` (Markdown, LaTeX, CSV), the main, gains,
  host, ablation and cost tables and the group labels;
- `figures.py`: the figures (matplotlib and seaborn are imported only to draw one); the curves and
  gain bars are drawn with matplotlib as seaborn drew them (the same PNGs, at a third of the cost);
- `page.py`: the page (`README.md`), the headline numbers, writing a study's folder and
  `metrics.json`, and `build_reports`, the entry point of `udabench report` (with its workers).
"""
