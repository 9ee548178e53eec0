"""The recipe parity table: each published host's official recipe (`harness.official`) beside the value
udabench resolves for it, generated from the code (`udabench recipe`, reports/recipe_parity.md).

A host is a trial of a shipped study (`Host.study`, `Host.point`), resolved at `--scale paper` exactly as
`udabench study run` resolves it (`load_study(...).resolve(point)`: base config, scale preset with the
architecture's recipe, the trial's axes), with the defaults of the architecture's options and of each
auxiliary task's options filled in. Each official row is then `same`, `differs` (the row names why) or
`DRIFT` (a value that differs with no named reason: `drift()` lists them and tests/test_recipe.py fails).
The same trial at the small scales (`cpu`, and `demo`/`smoke` where they differ) shows which recipe items
those scales use.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.official import HOSTS, INERT, NOT_RECIPE, Host, Official, origin, rows_for

REPO = Path(__file__).resolve().parents[2]
SMALL_SCALES = ("cpu", "demo", "smoke")
COMMAND = "udabench recipe"


class _Absent:
    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


NO_OPTION = _Absent("no option")  # udabench has no such option (the row's path is None)
UNSET = _Absent("unset")          # the path names a key the resolved config does not hold


@dataclass
class Row:
    host: str
    scale: str
    what: str
    path: str | None
    udabench: Any
    official: Any
    source: str                 # repository and file
    status: str                 # same | differs | DRIFT
    difference: str = ""
    small: dict[str, Any] = field(default_factory=dict)  # small scale -> udabench's value there


# --------------------------------------------------------------------------------------------------
# the resolved config of a host

def effective(cfg: Any, seeds: list[Any]) -> dict[str, Any]:
    """`cfg.to_dict()` with the defaults of the architecture's and the auxiliary tasks' options filled in
    (a wrapper's too: HRDA's `base_options` with its base's), and `study.seeds`."""
    from harness.models import segmentor_class
    from methods import AUX_TASKS

    d = cfg.to_dict()
    opts = segmentor_class(cfg.model.arch).parse_options(cfg.model.options).model_dump(mode="json")
    d["model"]["options"] = {**opts, **d["model"]["options"]}
    if "base" in opts and "base_options" in opts:
        base = segmentor_class(opts["base"]).parse_options(opts["base_options"]).model_dump(mode="json")
        d["model"]["options"]["base_options"] = {**base, **opts["base_options"]}
    for name, aux in d["method"]["aux"].items():
        options_model = getattr(AUX_TASKS.get(name), "Options", None)
        if options_model is not None:
            aux["options"] = options_model.model_validate(aux["options"]).model_dump(mode="json")
    d["study"] = {"seeds": seeds}
    return d


_STUDIES: dict[tuple[Path, str], Any] = {}


def resolve(host: Host, scale: str, root: Path = REPO) -> dict[str, Any]:
    """The effective config of `host`'s study trial at `scale`."""
    from harness.study.load import load_study

    path = root / host.study
    key = (path, scale)
    if key not in _STUDIES:
        _STUDIES[key] = load_study(path, scale)
    study = _STUDIES[key]
    seeds = sorted({s for block in study.blocks for s in block.get("seed", [])})
    return effective(study.resolve(dict(host.point)), seeds)


def lookup(cfg: dict[str, Any], path: str | None) -> Any:
    """The value at a dotted `path` of an effective config (or a probe's answer)."""
    if path is None:
        return NO_OPTION
    if path.startswith("probe:"):
        return PROBES[path.split(":", 1)[1]](cfg)
    node: Any = cfg
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return UNSET
        node = node[key]
    return node


# --------------------------------------------------------------------------------------------------
# probes: recipe items that are code, not a config value

def _layers(module: Any) -> str:
    from torch import nn

    names = {nn.Conv2d: "conv", nn.BatchNorm2d: "BN", nn.SyncBatchNorm: "BN", nn.ReLU: "ReLU", nn.GELU: "GELU",
             nn.Linear: "linear", nn.LayerNorm: "LN"}
    out = []
    for m in module.modules():
        if list(m.children()) or isinstance(m, nn.Identity | nn.Dropout | nn.Dropout2d):
            continue
        out.append(next((v for k, v in names.items() if isinstance(m, k)), type(m).__name__))
    return "-".join(out)


def _contrastive_head(cfg: dict[str, Any]) -> Any:
    """The layers of the `contrastive` task's projection head, built from the resolved options."""
    from torch import nn

    from methods import AUX_TASKS

    aux = cfg["method"]["aux"].get("contrastive")
    if aux is None:
        return UNSET

    class _Encoder(nn.Module):  # what the task reads of a segmentor: its stages (MiT-B5's)
        feature_channels = [64, 128, 320, 512]
        feature_strides = [4, 8, 16, 32]

    task = AUX_TASKS.get("contrastive")(aux["options"], _Encoder(), 19)
    head = getattr(task, "head", None)
    return _layers(head) if isinstance(head, nn.Module) else UNSET


def _fd_view_scale(cfg: dict[str, Any]) -> Any:
    """The scale of the input whose encoder features the feature distance reads (the segmentor's
    `view_features`, harness/models/base.py), measured on the architecture built with the resolved options around a small encoder."""
    return _view_scale(json.dumps(cfg["model"], sort_keys=True))


@functools.cache
def _view_scale(model_json: str) -> float:
    import torch

    from harness.models import create_segmentor

    cfg = {"model": json.loads(model_json)}
    options = dict(cfg["model"]["options"])
    options["encoder_options"] = {}
    if "base_options" in options:
        options["base_options"] = {**options["base_options"], "embed_dim": 16, "encoder_options": {}}
        options["attention_embed_dim"] = 16
    else:
        options["embed_dim"] = 16
    model = create_segmentor(cfg["model"]["arch"], backbone="pvt_v2_b0", **options).eval()
    side = max(max(options.get("detail_crop", (64, 64))), 64)
    with torch.no_grad():
        feats = model.view_features(torch.zeros(1, 3, side, side))
    return feats[-1].shape[-1] * model.feature_strides[-1] / side


PROBES = {"contrastive_head": _contrastive_head, "fd_view_scale": _fd_view_scale}


# --------------------------------------------------------------------------------------------------
# the table

def _plain(value: Any) -> Any:
    return value if isinstance(value, _Absent) else json.loads(json.dumps(value))


def fmt(value: Any) -> str:
    if isinstance(value, _Absent):
        return repr(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def status_of(row: Official, value: Any) -> str:
    if _plain(value) == _plain(row.value):
        return "same"
    return "differs" if row.differs else "DRIFT"


_SECTIONS = ("data", "model", "method", "aux", "optim", "schedule", "eval", "amp", "study")


def _section(path: str | None) -> int:
    if path is None:
        return len(_SECTIONS)
    if path.startswith(("probe:", "method.aux.")):
        return _SECTIONS.index("aux")
    return _SECTIONS.index(path.split(".")[0]) if path.split(".")[0] in _SECTIONS else len(_SECTIONS)


def parity(host: str, scale: str = "paper", root: Path = REPO, small: bool = True) -> list[Row]:
    """Every official row of `host` at `scale` beside udabench's value there (and at the small scales)."""
    h = HOSTS[host]
    cfg = resolve(h, scale, root)
    smalls = {s: resolve(h, s, root) for s in SMALL_SCALES} if small else {}
    out = []
    for r in sorted(rows_for(host, scale), key=lambda r: _section(r.path)):
        value = lookup(cfg, r.path)
        status = status_of(r, value)
        small_values = {s: lookup(c, r.path) for s, c in smalls.items()}
        if r.path is None and r.ours:  # behaviour, not a value: the same at every scale
            value = _Absent(r.ours)
            small_values = dict.fromkeys(smalls, _Absent("as at paper"))
        o = origin(host, r)
        out.append(Row(host, scale, r.what, r.path, value, r.value, f"{o.repo} {o.root}{r.source}", status,
                       r.differs if status == "differs" else "", small_values))
    return out


def drift(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.status == "DRIFT"]


def _leaves(d: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        path = f"{prefix}{k}"
        out += _leaves(v, path + ".") if isinstance(v, dict) else [path]
    return out


def uncovered(host: str, scale: str = "paper", root: Path = REPO) -> list[str]:
    """The fields of `host`'s resolved config at `scale` that have no official row, are not in
    `NOT_RECIPE` and are not `INERT` there: recipe values the parity table would silently leave out."""
    cfg = resolve(HOSTS[host], scale, root)
    rows = rows_for(host, scale)
    official = {r.path: r.value for r in rows if r.path}
    covered = set(official) | set(NOT_RECIPE)

    def known(path: str) -> bool:
        parts = path.split(".")
        return any(".".join(parts[:i]) in covered for i in range(1, len(parts) + 1))

    def inert(path: str) -> bool:
        switch = INERT.get(path)
        return switch is not None and _plain(switch[1]) in (_plain(lookup(cfg, switch[0])),
                                                            _plain(official.get(switch[0], UNSET)))

    return [p for p in _leaves(cfg) if not known(p) and not inert(p)]


def host_scales(hosts: list[str] | None = None, scales: list[str] | None = None) -> list[tuple[str, str]]:
    """(host, scale) pairs with an official run, in table order."""
    return [(h, s) for h in (hosts or list(HOSTS)) for s in HOSTS[h].scales if scales is None or s in scales]


def _small_cell(row: Row) -> str:
    if not row.small:
        return ""
    cpu = row.small.get("cpu")
    text = fmt(cpu) + (" (official)" if _plain(cpu) == _plain(row.official) else "")
    others = [f"{s} {fmt(v)}" for s, v in row.small.items() if s != "cpu" and _plain(v) != _plain(cpu)]
    return text + (f"; {', '.join(others)}" if others else "")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def markdown(pairs: list[tuple[str, str]], root: Path = REPO) -> str:
    """The parity document: one section and table per (host, scale)."""
    lines = [
        "# Recipe parity: udabench against the official code",
        "",
        f"Generated from the code by `{COMMAND}` (`harness/report/recipe.py`, official values in "
        "`harness/official.py`); do not edit: `tests/test_recipe.py` checks that this file is what the code "
        "generates, and fails when a paper-scale value differs from its official one without a named difference. "
        "Each host is a trial of a shipped study resolved at `--scale paper` as `udabench study run` resolves it. "
        "Official code read at lhoyer/DAFormer e6f6e04, lhoyer/MIC 2f932a9 (`seg/`), lhoyer/HRDA c370b5b, "
        "BIT-DA/SePiCo bce38ed. A host built on another (MIC and HRDA on DAFormer, MIC(HRDA) on HRDA) lists its "
        "base's rows with the base's files.",
        "",
        "Status: `same`; `differs` (the difference is named); `DRIFT` (differs without a named reason: a "
        "failing test). Column `cpu`: udabench's value for the same trial at `--scale cpu`, \"(official)\" "
        "where it is the official one, and `demo`/`smoke` where they differ from `cpu`.",
        "",
    ]
    for host, scale in pairs:
        h = HOSTS[host]
        rows = parity(host, scale, root)
        counts = {k: sum(r.status == k for r in rows) for k in ("same", "differs", "DRIFT")}
        point = ",".join(f"{k}={v}" for k, v in h.point.items())
        lines += [f"## {h.title} (`{host}`), `--scale {scale}`", "",
                  f"- official: {h.repo}, {h.root}{h.experiment}",
                  f"- udabench: `{h.study}` trial `{point}` (`udabench study run {h.study} --scale {scale}`)"]
        pub = h.published.get(scale)
        if pub is not None:
            lines.append(f"- published: {pub.miou:g} mIoU ({pub.protocol} classes), {pub.source}"
                         + ("" if pub.checked else "; not checked against the paper here"))
        lines += [f"- note: {n}" for n in h.notes]
        at_cpu = sum(_plain(r.small.get("cpu")) == _plain(r.official) for r in rows)
        lines += [f"- {len(rows)} items: {counts['same']} same, {counts['differs']} differ (named), "
                  f"{counts['DRIFT']} drift; at `--scale cpu` {at_cpu} of the {len(rows)} are the official value",
                  "",
                  "| item | option | udabench | official | status | official file | `cpu` |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            status = r.status + (f": {r.difference}" if r.difference else "")
            cells = [r.what, _code(r.path or ""), _code(fmt(r.udabench)), _code(fmt(r.official)), status, r.source,
                     _small_cell(r)]
            lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


CSV_FIELDS = ("host", "scale", "item", "option", "udabench", "official", "status", "difference", "official_file",
              "cpu", "demo", "smoke")


def csv_text(pairs: list[tuple[str, str]], root: Path = REPO) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for host, scale in pairs:
        for r in parity(host, scale, root):
            w.writerow([r.host, r.scale, r.what, r.path or "", fmt(r.udabench), fmt(r.official), r.status,
                        r.difference, r.source, *(fmt(r.small[s]) if s in r.small else "" for s in SMALL_SCALES)])
    return buf.getvalue()
