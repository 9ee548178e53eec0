"""A run config's fields as a study file addresses them: dotted paths, nested overlays, what a field
accepts in words ('a number in [0, 1)'), and every problem of a raw run config at once."""

from __future__ import annotations

import copy
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError

from harness.config import (
    AuxConfig,
    ConfigError,
    MethodConfig,
    RunConfig,
    deep_merge,
)
from harness.engine.resolve import validate as validate_config
from harness.registry import UnknownNameError, closest


def loc_str(loc: tuple | list) -> str:
    """('grid', 'mask_ratio', 2) -> 'grid.mask_ratio[2]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def nest(path: str, value: Any) -> dict[str, Any]:
    """'a.b.c', v -> {'a': {'b': {'c': v}}}."""
    out: Any = copy.deepcopy(value)
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


def expand_dotted(d: dict[str, Any]) -> dict[str, Any]:
    """A mapping whose keys may be dotted paths -> a nested mapping (later keys merge over earlier)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            value = expand_dotted(value)
        out = deep_merge(out, nest(str(key), value))
    return out


def leaf_paths(d: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in d.items():
        p = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            paths.extend(leaf_paths(value, p))
        else:
            paths.append(p)
    return paths


def related(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def fmt_num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def describe_field(info) -> str:
    """What a pydantic field accepts, in words: 'a number in [0, 1)', "one of 'tiny', 'small'"."""
    import annotated_types as at

    ann = info.annotation
    nullable = False
    args = get_args(ann)
    if args and type(None) in args and get_origin(ann) is not Literal:
        nullable = True
        rest = [a for a in args if a is not type(None)]
        ann = rest[0] if len(rest) == 1 else ann
    if get_origin(ann) is Literal:
        text = "one of " + ", ".join(repr(v) for v in get_args(ann))
    elif ann is bool:
        text = "true or false"
    elif ann is int:
        text = "an integer"
    elif ann is float:
        text = "a number"
    elif ann is str:
        text = "a string"
    elif get_origin(ann) is tuple:
        text = f"a list of {len(get_args(ann))} values" if Ellipsis not in get_args(ann) else "a list"
    else:
        text = "a valid value"
    lo = hi = None
    for m in info.metadata:
        if isinstance(m, at.Ge):
            lo = ("[", m.ge)
        elif isinstance(m, at.Gt):
            lo = ("(", m.gt)
        elif isinstance(m, at.Le):
            hi = ("]", m.le)
        elif isinstance(m, at.Lt):
            hi = (")", m.lt)
    if lo and hi:
        text += f" in {lo[0]}{fmt_num(lo[1])}, {fmt_num(hi[1])}{hi[0]}"
    elif lo:
        text += f" {'>=' if lo[0] == '[' else '>'} {fmt_num(lo[1])}"
    elif hi:
        text += f" {'<=' if hi[0] == ']' else '<'} {fmt_num(hi[1])}"
    return text + (" or null" if nullable else "")


def model_of(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for a in get_args(annotation):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def field_info(path: str):
    """The pydantic FieldInfo at a run-config path (including `method.aux.<task>.options.<x>`)."""
    parts = path.split(".")
    model: type[BaseModel] = RunConfig
    i = 0
    while i < len(parts):
        f = model.model_fields.get(parts[i])
        if f is None:
            return None
        if i == len(parts) - 1:
            return f
        if model is MethodConfig and parts[i] == "aux":
            model, i = AuxConfig, i + 2
            continue
        if model is AuxConfig and parts[i] == "options":
            try:
                from methods import AUX_TASKS

                model = AUX_TASKS.get(parts[i - 1]).Options
            except (UnknownNameError, AttributeError):
                return None
            i += 1
            continue
        sub = model_of(f.annotation)
        if sub is None:
            return None
        model, i = sub, i + 1
    return None


VALUE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "literal_error",
                 "float_parsing", "float_type", "int_parsing", "int_type", "int_from_float", "bool_parsing",
                 "bool_type", "string_type", "finite_number", "tuple_type", "too_short", "too_long")


def _pydantic_problems(err: ValidationError, prefix: str, model: type[BaseModel]) -> list[tuple[str, str]]:
    from harness.config import _known_fields

    out = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        path = ".".join([prefix, *loc] if prefix else loc)
        if e["type"] == "extra_forbidden":
            valid = _known_fields(model, loc[:-1]) or []
            msg = f"unknown key{closest(loc[-1], valid)}"
            if valid and not closest(loc[-1], valid):
                msg += f"; valid keys: {', '.join(valid)}"
        elif e["type"] in VALUE_ERRORS and (info := field_info(path)) is not None:
            msg = f"expected {describe_field(info)}"
            if "input" in e and not isinstance(e["input"], dict):
                msg += f", got {e['input']!r}"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if "input" in e and not isinstance(e["input"], dict | list):
                msg += f" (got {e['input']!r})"
        out.append((path, msg))
    return out


def config_problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Every problem of a raw run config, as (config path, message); [] when it is valid. Registry
    names and auxiliary-task options are checked even when other fields are bad."""
    from harness.models import MODELS
    from methods import AUX_TASKS, HOSTS

    out: list[tuple[str, str]] = []
    try:
        RunConfig.model_validate(data)
    except ValidationError as e:
        out.extend(_pydantic_problems(e, "", RunConfig))
    defaults = RunConfig()

    def get(*keys: str, default: Any = None) -> Any:
        node: Any = data
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                return default
            node = node[k]
        return node

    arch = get("model", "arch", default=defaults.model.arch)
    host_name = get("method", "host", default=defaults.method.host)
    for path, registry, name in (("model.arch", MODELS, arch), ("method.host", HOSTS, host_name)):
        if isinstance(name, str):
            try:
                registry.get(name)
            except UnknownNameError as e:
                out.append((path, str(e)))
    options = get("model", "options", default={})
    if isinstance(arch, str) and arch in MODELS and isinstance(options, dict):
        try:
            from harness.models import check_options

            check_options(arch, options)
        except ConfigError as e:
            out.append(("model.options", str(e).split(": ", 1)[-1]))
        except ImportError:
            pass
    host = HOSTS.get(host_name) if isinstance(host_name, str) and host_name in HOSTS else None
    aux = get("method", "aux", default={})
    for name, spec in (aux.items() if isinstance(aux, dict) else []):
        try:
            task = AUX_TASKS.get(str(name))
        except UnknownNameError as e:
            out.append((f"method.aux.{name}", str(e)))
            continue
        if host is not None and getattr(task, "needs_pseudo_labels", False) and not host.provides_pseudo_labels:
            out.append((f"method.aux.{name}", f"needs the teacher's pseudo-labels, which host "
                        f"'{host_name}' does not provide; use a self-training host such as 'dacs'"))
        opts = spec.get("options", {}) if isinstance(spec, dict) else {}
        options_model = getattr(task, "Options", None)
        if options_model is not None and isinstance(opts, dict):
            try:
                options_model.model_validate(opts)
            except ValidationError as e:
                out.extend(_pydantic_problems(e, f"method.aux.{name}.options", options_model))
    if not out:  # the run-config loader is the final authority
        try:
            validate_config(data, "")
        except ConfigError as e:
            out.append(("", str(e).removeprefix(": ")))
    return out
