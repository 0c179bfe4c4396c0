"""The layout's rules, checked on the source: no import circle among the core's modules (imports inside functions
included), no module importing another's private names (the explorer included), no core module over 700 lines, and
the neuron model compared as a string only where user input is parsed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ttfs_core", "ttfs_ui")
MAX_LINES = 700


def _modules() -> dict[str, Path]:
    """Every module of the two packages by dotted name (a package by its own name)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the file, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name in modules]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                if child in modules:  # `from . import verify`: the module itself
                    found.append((child, [], node.lineno))
                elif base in modules:
                    found.append((base, [alias.name], node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target, _, _ in _imports(name, path, modules):
            if target != name and not name.startswith(target + "."):  # a package's own __init__ is not a cycle
                graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, if there is any (iterative depth-first search)."""
    state: dict[str, int] = {}
    for start in graph:
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return [*path[path.index(child):], child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def test_the_core_has_no_import_circle():
    core = {m: {t for t in ts if t.startswith("ttfs_core")} for m, ts in _graph().items() if m.startswith("ttfs_core")}
    assert _cycle(core) is None, " -> ".join(_cycle(core) or [])


def test_the_core_never_imports_the_explorer_or_its_libraries():
    for name, path in _modules().items():
        if name.startswith("ttfs_core"):
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"^\s*(import|from)\s+(streamlit|plotly|ttfs_ui)\b", text, re.M), name


def test_no_module_imports_another_modules_private_names():
    modules = _modules()
    bad = []
    for name, path in modules.items():
        for target, names, line in _imports(name, path, modules):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != name:
                bad.append(f"{path.relative_to(ROOT)}:{line} takes {', '.join(private)} from {target}")
            if not names and target.rpartition(".")[2].startswith("_") and target.rpartition(".")[2] != "__init__":
                bad.append(f"{path.relative_to(ROOT)}:{line} imports the private module {target}")
    assert not bad, "\n".join(bad)


def test_no_core_module_is_over_700_lines():
    sizes = {n: len(p.read_text(encoding="utf-8").splitlines()) for n, p in _modules().items()}
    long = {n: v for n, v in sizes.items() if n.startswith("ttfs_core") and v > MAX_LINES}
    assert not long, long


def test_the_neuron_model_is_compared_as_a_string_only_where_input_is_parsed():
    """`== "b1"`, `!= 'alpha'`, `in ("alpha", "b1")` ...: at most two places in the whole project."""
    pattern = re.compile(r"""(==|!=|\bin)\s*[\(\[{]?\s*["'](alpha|b1)["']|["'](alpha|b1)["']\s*(==|!=)""")
    places = []
    for root in (*PACKAGES, "pages"):
        for path in sorted((ROOT / root).rglob("*.py")):
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if pattern.search(line):
                    places.append(f"{path.relative_to(ROOT)}:{i}")
    for path in [ROOT / "app.py"]:
        places += [f"app.py:{i}" for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert len(places) <= 2, places


def test_every_code_name_in_docs_math_exists():
    """docs/math.md names the home of each equation: every `module.name` it cites must resolve in ttfs_core."""
    import importlib

    text = (ROOT / "docs" / "math.md").read_text(encoding="utf-8")
    cited = set(re.findall(r"`((?:sim\.)?[a-z_]+\.[A-Za-z_][A-Za-z0-9_]*)`", text))
    missing = []
    for name in sorted(cited):
        module, _, attr = name.rpartition(".")
        try:
            if not hasattr(importlib.import_module(f"ttfs_core.{module}"), attr):
                missing.append(name)
        except ImportError:
            if not hasattr(importlib.import_module("ttfs_core.records"), module.split(".")[0]):
                missing.append(name)
    assert len(cited) > 15 and not missing, missing
