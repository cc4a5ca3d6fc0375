"""The core's structure: no import cycle between mmmed's modules, and the core knows no modality by name.

Imports are read from the source (every ``import``/``from`` statement, also inside functions, where a cycle
hides best), not by importing, so the test sees what the code could ever import.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "mmmed"
# What a modality plugin owns; the core must not name it (issue: "one model, several modalities").
MODALITY_NAMES = re.compile(r"""["'](ecg|xray)["']""")


def core_modules() -> dict[str, Path]:
    """``mmmed.x.y`` -> file, for every module of the core package."""
    modules = {}
    for path in CORE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def imported_modules(path: Path, package: str, known: set[str]) -> set[str]:
    """The core modules ``path`` imports (absolute and relative, module-level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = core_modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = imported_modules(path, package, set(modules)) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return stack[stack.index(child):] + [child]
            if child not in state:
                cycle = visit(child)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_reader_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from mmmed.infer.restore import find_checkpoint\n    from . import multimodal_lm\n")
    assert imported_modules(source, "mmmed.model", {"mmmed.infer.restore", "mmmed.model.multimodal_lm", "mmmed.eval.plots"}) == {
        "mmmed.infer.restore", "mmmed.model.multimodal_lm"}


def test_no_import_cycle_between_core_modules():
    graph = import_graph()
    assert {"mmmed.infer.inference", "mmmed.infer.restore", "mmmed.model.assembly", "mmmed.train.build"} <= set(graph)
    assert "mmmed.infer.restore" in graph["mmmed.infer.inference"]  # the walk sees real edges
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_the_subpackages_depend_in_one_direction():
    """model <- eval <- train, infer; cluster plans the model: no subpackage imports one that imports it back."""
    subpackage = lambda module: ".".join(module.split(".")[:2])  # mmmed.model.prompts -> mmmed.model
    graph: dict[str, set[str]] = {}
    for module, imports in import_graph().items():
        graph.setdefault(subpackage(module), set()).update(subpackage(m) for m in imports)
    graph = {package: imports - {package} for package, imports in graph.items()}
    assert {"mmmed.model", "mmmed.train", "mmmed.eval", "mmmed.infer", "mmmed.cluster"} <= set(graph)
    assert graph["mmmed.model"] <= {"mmmed.atomic_files"}  # the model knows nothing of training or evaluation
    assert find_cycle(graph) is None, f"subpackage cycle: {' -> '.join(find_cycle(graph))}"


def test_the_core_names_no_modality_and_imports_no_data_plugin():
    offenders = []
    for name, path in core_modules().items():
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if MODALITY_NAMES.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mmmed_datasets"):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: imports {node.module}")
            if isinstance(node, ast.Import) and any(a.name.startswith("mmmed_datasets") for a in node.names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: imports a data plugin")
    assert offenders == []
