"""The layout docs/architecture.md describes, checked on the source: layers, no import cycle, thin DAGs.

Read from the files (ast), not by importing them, so a cycle that only works because an import
sits inside a function is still a cycle here.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rlaif_tasks"

LAYERS = [
    ("ground", ["rlaif_tasks", "rlaif_tasks.errors", "rlaif_tasks.atomic", "rlaif_tasks.stores", "rlaif_tasks.tags", "rlaif_tasks.faults",
                "rlaif_tasks.services", "rlaif_tasks.warm_start", "rlaif_tasks.config"]),
    ("models", ["rlaif_tasks.models"]),
    ("inputs", ["rlaif_tasks.data", "rlaif_tasks.generation", "rlaif_tasks.rewards", "rlaif_tasks.overrides"]),
    ("measures", ["rlaif_tasks.preferences", "rlaif_tasks.evaluation"]),
    ("train", ["rlaif_tasks.train"]),
    ("mlflow", ["rlaif_tasks.tracking", "rlaif_tasks.lease", "rlaif_tasks.registry", "rlaif_tasks.gate", "rlaif_tasks.retention", "rlaif_tasks.model_card"]),
    ("stages", ["rlaif_tasks.stages"]),
    ("entry points", ["rlaif_tasks.orchestration", "rlaif_tasks.cli", "rlaif_tasks.access"]),
]
"""Lowest first: a module may import its own layer and those below it, never one above (docs/architecture.md)."""

HEAVY = {"torch", "transformers", "mlflow", "trl", "peft", "datasets", "accelerate", "pandas", "numpy", "onnxruntime", "sklearn",
         "h5py", "joblib", "evaluate", "matplotlib", "gguf", "safetensors", "scipy"}
"""Libraries whose import costs seconds: kept out of what the DAG processor parses, so imported inside functions."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py") if "toxicity_metric" not in p.parts}
"""Every module of the package (the `evaluate` measurement folder is loaded by path, not imported)."""


@functools.cache
def imports(name: str) -> list[tuple[str, bool, bool]]:
    """(imported rlaif_tasks module or external top package, is it ours, is it inside a function) for each import in `name`."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        lazy = id(node) not in top
        if isinstance(node, ast.Import):
            found += [(a.name, a.name.split(".")[0] == "rlaif_tasks", lazy) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            if module.split(".")[0] != "rlaif_tasks":
                found.append((module, False, lazy))
                continue
            for alias in node.names:
                full = f"{module}.{alias.name}"
                found.append((full if full in MODULES else module, True, lazy))
    return found


def layer(name: str) -> int:
    matches = [(len(prefix), i) for i, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes if name == prefix or name.startswith(prefix + ".")]
    assert matches, f"{name} is in no layer: add it to LAYERS and docs/architecture.md"
    return max(matches)[1]


GRAPH = {name: sorted({target for target, ours, _ in imports(name) if ours and target in MODULES and target != name}) for name in MODULES}


def test_no_import_cycle_among_the_package_modules():
    cycles, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in GRAPH[node]:
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)
    assert cycles == []


def test_the_cycle_check_can_fail():
    GRAPH["rlaif_tasks.errors"] = ["rlaif_tasks.config"]
    try:
        with pytest.raises(AssertionError, match="rlaif_tasks.config -> rlaif_tasks.errors -> rlaif_tasks.config"):
            test_no_import_cycle_among_the_package_modules()
    finally:
        GRAPH["rlaif_tasks.errors"] = []


def test_lower_layers_never_import_higher_ones():
    upward = [f"{name} ({LAYERS[layer(name)][0]}) imports {target} ({LAYERS[layer(target)][0]})"
              for name, targets in GRAPH.items() for target in targets if layer(target) > layer(name)]
    assert upward == []


@functools.cache
def heavy_at_import(name: str, seen: frozenset = frozenset()) -> bool:
    """Whether importing `name` (its parent packages included) loads a heavy library."""
    if name not in MODULES or name in seen:
        return False
    parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
    for target, ours, lazy in imports(name):
        if lazy:
            continue
        if (ours and heavy_at_import(target, seen | {name})) or (not ours and target.split(".")[0] in HEAVY):
            return True
    return any(heavy_at_import(p, seen | {name}) for p in parents)


def test_imports_sit_at_module_top_unless_they_load_a_heavy_library():
    """An import inside a function is there to keep DAG parsing and the CLI cheap, for nothing else."""
    needless = sorted({f"{name} imports {target} inside a function" for name in MODULES for target, ours, lazy in imports(name)
                       if ours and lazy and target in MODULES and target != name and not heavy_at_import(target)})
    assert needless == []


def test_what_the_dag_processor_imports_loads_no_heavy_library():
    light = ["rlaif_tasks.orchestration", "rlaif_tasks.stages.nightly", "rlaif_tasks.stages.preferences", "rlaif_tasks.stages.common"]
    assert [name for name in light if heavy_at_import(name)] == []
    assert heavy_at_import("rlaif_tasks.train.ppo")  # the check sees a heavy module when there is one


def test_dag_files_are_wiring_only():
    for dag_file in sorted((ROOT / "dags").glob("*.py")):
        text = dag_file.read_text(encoding="utf-8")
        assert "sys.path" not in text, dag_file.name
        ours = re.findall(r"^from (rlaif_tasks[\w.]*) import", text, flags=re.M)
        assert ours and set(ours) <= {"rlaif_tasks.orchestration", "rlaif_tasks.stages"}, (dag_file.name, ours)
        assert "run_stage(" in text and 'stage("' not in text, dag_file.name  # stages are called by name, not by string


def test_the_mlflow_folder_configures_the_server_and_holds_no_python():
    folder = ROOT / "mlflow"
    assert (folder / "README.md").is_file() and (folder / "basic_auth.ini.template").is_file()
    assert list(folder.rglob("*.py")) == []  # a package named mlflow would shadow the library
    assert "mlflow/basic_auth.ini.template" in (ROOT / "scripts" / "service.sh").read_text(encoding="utf-8")
    assert re.search(r"^COPY mlflow ", (ROOT / "docker" / "Dockerfile").read_text(encoding="utf-8"), flags=re.M)


def test_every_rlaif_tag_name_is_declared_in_tags_py():
    literal = re.compile(r"""["']rlaif\.[a-z_]+["']""")
    stray = [f"{path.relative_to(ROOT)}: {m.group(0)}" for path in PACKAGE.rglob("*.py") if path.name != "tags.py"
             for m in literal.finditer(path.read_text(encoding="utf-8"))]
    assert stray == []
