"""The house's rules, checked on the source: imports run one way down the floors, no module is part of an import
circle (imports inside functions count), jobs/ and workers/ take only the engine's plain-data vocabulary, benchmarks
live only in benchmarks/, and docs/ARCHITECTURE.md maps every module."""
from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.helpers.paths import REPO

FOLDERS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
# A floor may import its own and lower floors only; `tide` (entry points) composes everything below.
FLOORS = {"tide.kernels": 1, "tide.engine": 2, "tide.jobs": 3, "tide.workers": 4, "tide.benchmarks": 5, "tide": 6}
# All that jobs/ and workers/ take from the engine: its request and output vocabulary, plain data without torch.
ENGINE_VOCABULARY = {"tide.engine.sampling_params", "tide.engine.decoding.guided_params", "tide.engine.outputs",
                     "tide.engine.embeddings"}


def modules() -> dict[str, Path]:
    """Every module of the distribution by its import name."""
    found = {}
    for name, folder in FOLDERS.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((name, *parts))] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The distribution's modules `path` imports anywhere in it (a `from X import Y` of a submodule Y counts Y)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            subs = {f"{node.module}.{a.name}" for a in node.names} & known.keys()
            out |= subs or ({node.module} & known.keys())
    return out


def floor(module: str) -> int:
    """The floor of the longest prefix in FLOORS the module falls under."""
    return FLOORS[max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len)]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(root: str) -> None:
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])

    for name in sorted(edges):
        if name not in index:
            visit(name)
    return found


def test_no_import_circles():
    assert cycles(graph()) == []


def test_imports_run_down_the_floors():
    upward = [f"{a} imports {b}" for a, targets in graph().items() for b in targets if floor(b) > floor(a)]
    assert upward == []


def test_jobs_and_workers_take_only_the_engines_vocabulary():
    edges = graph()
    beyond = [f"{a} imports {b}" for a, targets in edges.items() if a.startswith(("tide.jobs", "tide.workers"))
              for b in targets if floor(b) == FLOORS["tide.engine"] and b not in ENGINE_VOCABULARY]
    assert beyond == []
    below = sorted(m for m in edges if m.startswith(("tide.jobs", "tide.workers")))
    probe = f"import importlib, sys; [importlib.import_module(m) for m in {below!r}]; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "False\n"


def test_benchmarks_live_in_their_own_room():
    stray = [str(p.relative_to(REPO)) for name, p in modules().items()
             if not name.startswith(("tide.benchmarks", "tide.commands")) and p.stem.startswith(("bench", "peer_"))]
    assert stray == []
    users = {a for a, targets in graph().items() for b in targets if b.startswith("tide.benchmarks")}
    assert {u for u in users if not u.startswith("tide.benchmarks")} <= {"tide.commands.bench", "tide.commands.tune"}


def test_architecture_maps_every_module():
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    missing = [str(p.relative_to(REPO)) for p in modules().values()
               if p.name != "__init__.py" and f"`{p.relative_to(REPO)}`" not in text]
    assert missing == []


def test_no_test_imports_another_test_module_or_a_conftest():
    offenders = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tests."):
                leaf = node.module.rsplit(".", 1)[1]
                if leaf.startswith("test_") or leaf == "conftest":
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {node.module}")
    assert offenders == []
