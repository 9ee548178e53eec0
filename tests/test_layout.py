"""The code's layout holds: no import cycles among the project's modules, and each layer imports only
the layers below it (ARCHITECTURE.md).

The import graph is read with `ast` from every `.py` file under harness/ and methods/, with the imports
inside functions too (a lazy import is still a dependency). `import a.b` and `from a import b` are an
edge to module `a.b` when it is one of ours, else to `a`. Not edges: the implicit import of a parent
package's `__init__` and `importlib.import_module(...)` with a computed name (how `harness.cli` finds
its commands and `methods` its modules: the registry pattern of timm).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "methods")

# Lower rank = lower layer. A module may import its own layer (same name) and any lower rank.
LAYERS: list[tuple[str, int]] = [
    ("harness.env", 0), ("harness.errors", 0), ("harness.labels", 0), ("harness.registry", 0),
    ("harness.config", 0), ("harness.scales", 0), ("harness", 0),
    ("harness.data", 1), ("harness.models", 1),
    ("methods", 2),
    ("harness.engine", 3),
    ("harness.study", 4),
    ("harness.report", 5),
    ("harness.cli", 6),
]
MAX_LINES = 650  # "no module above ~600 lines unless it is one cohesive thing (say why in its docstring)"


def module_files() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
    if node.level == 0:
        return node.module
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node, module, path.name == "__init__.py")
                if base is None:
                    continue
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.append(sub if sub in files else base)
            for t in targets:
                while t and t not in files and "." in t:  # `import harness.data.io as x` etc.
                    t = t.rsplit(".", 1)[0]
                if t in files and t != module:
                    graph[module].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (iterative DFS, three colours)."""
    colour = dict.fromkeys(graph, 0)
    for start in sorted(graph):
        if colour[start]:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[child] == 1:
                return path[path.index(child):] + [child]
            elif colour[child] == 0:
                colour[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def layer(module: str) -> tuple[str, int]:
    best = max((name for name, _ in LAYERS if module == name or module.startswith(name + ".")), key=len)
    return best, dict(LAYERS)[best]


def test_find_cycle_finds_a_cycle_and_only_a_cycle():  # the checker itself
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"d2"}, "d2": {"d"}}) == ["d", "d2", "d"]


def test_the_graph_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "harness"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("def f():\n    from harness.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from . import a\nimport harness.sub.c as c\n")
    (pkg / "sub" / "c.py").write_text("from .a import f\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__), "PACKAGES", ("harness",))
    graph = import_graph()
    assert graph["harness.sub.a"] == {"harness.sub.b"}
    assert graph["harness.sub.b"] == {"harness.sub.a", "harness.sub.c"}
    assert graph["harness.sub.c"] == {"harness.sub.a"}
    assert find_cycle(graph) is not None


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 40  # the walk found the project
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_each_layer_imports_only_layers_below_it():
    bad = []
    for module, deps in import_graph().items():
        name, rank = layer(module)
        for dep in deps:
            dep_name, dep_rank = layer(dep)
            if dep_rank > rank or (dep_rank == rank and dep_name != name and rank > 0):
                bad.append(f"{module} ({name}) imports {dep} ({dep_name})")
    assert not bad, "layering broken (ARCHITECTURE.md):\n" + "\n".join(sorted(bad))


def test_modules_stay_small_or_say_why():
    long = []
    for path in module_files().values():
        lines = path.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_LINES and "one cohesive" not in doc:
            long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not long, f"modules over {MAX_LINES} lines whose docstring does not say why:\n" + "\n".join(long)


@pytest.mark.parametrize("old", ["harness/cli.py", "harness/training.py", "harness/study.py", "harness/runner.py",
                                 "harness/report.py", "harness/tracking.py", "harness/estimate.py",
                                 "harness/evaluation.py", "harness/checkpoint.py", "harness/demo.py",
                                 "harness/commands_train.py", "harness/study_commands.py",
                                 "harness/report_commands.py", "harness/data/commands.py",
                                 "harness/models/commands.py", "harness/data/synthetic.py"])
def test_no_module_lives_at_its_old_path(old):
    assert not (ROOT / old).exists(), f"{old}: moved (ARCHITECTURE.md); no shims at old paths"
