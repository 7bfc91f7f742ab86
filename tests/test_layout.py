"""The layout's rules, read from the source with `ast`: no import cycle, no upward import, a docstring on every file.

Layers, lowest first: `tidal` (plumbing) < `models` < `jobs` and `serving` < `devtools`, `dags` and `plugins`. A
module may import its own layer or a lower one, at the top of the file or inside a function alike: `tidal` never
imports `jobs` or `models`, `models` never imports `jobs`, serving never runs a job, and nothing in the pipeline
imports `dags`, the UI plugin or the development tools.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


PACKAGES = ("tidal", "models", "jobs", "serving", "devtools", "dags", "plugins")
# What each package may import from the project (itself included).
ALLOWED = {
    "tidal": {"tidal"},
    "models": {"models", "tidal"},
    "jobs": {"jobs", "models", "tidal"},
    "serving": {"serving", "models", "tidal"},  # the online path: reads the registry, never runs a job
    "devtools": {"devtools", "jobs", "models", "tidal"},
    "dags": {"dags", "jobs", "tidal"},  # jobs only inside tasks (tests/dags checks that parsing imports none)
    "plugins": {"plugins", "jobs", "tidal"},  # the Airflow UI plugin: the same registry and report functions as the CLI
}
MAX_FUNCTION_LINES = 80


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path) -> dict[str, Path]:
    return {module_name(root, path): path for package in PACKAGES if (root / package).is_dir()
            for path in sorted((root / package).rglob("*.py"))}


def most_specific_module(target: str, modules: dict[str, Path]) -> str:
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports anywhere in its file (inside functions too), each resolved to the most
    specific module: `from a.b import c` is an import of module a.b.c if there is one, else of a.b."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            candidates = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {module for module in (most_specific_module(c, modules) for c in candidates) if module and module != name}
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets
                  if target.split(".")[0] not in ALLOWED[module.split(".")[0]])


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk, each as the path that closes it."""
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return cycles


def test_no_module_imports_a_higher_layer():
    assert upward_imports(import_graph(REPO_ROOT)) == []


def test_the_imports_have_no_cycle():
    assert import_cycles(import_graph(REPO_ROOT)) == []


def test_the_checks_see_function_level_cycles_and_upward_imports(tmp_path):
    """The rules on a small tree that breaks both, so the two tests above can fail."""
    for package, files in {"tidal": {"__init__.py": "", "paths.py": "def f():\n    from jobs.a import g\n"},
                           "models": {"m.py": "import jobs.a as a\n"},
                           "jobs": {"__init__.py": "", "a.py": "from jobs.b import h\n",
                                    "b.py": "def h():\n    from . import a\n", "c.py": "from dags.d import x\n"},
                           "dags": {"d.py": "import tidal\n"}}.items():
        (tmp_path / package).mkdir()
        for file, text in files.items():
            (tmp_path / package / file).write_text(text)
    graph = import_graph(tmp_path)
    assert upward_imports(graph) == ["jobs.c -> dags.d", "models.m -> jobs.a", "tidal.paths -> jobs.a"]
    assert ["jobs.a", "jobs.b", "jobs.a"] in import_cycles(graph)


def test_the_pipeline_declaration_names_only_functions_that_exist():
    """tidal/pipelines.py names jobs as strings (so tidal imports none); each must resolve, in a lower-or-equal layer
    than the DAGs that run it."""
    from tidal.pipelines import PIPELINES, resolve

    for pipeline in PIPELINES.values():
        for step in pipeline.steps:
            assert callable(resolve(step.function)), step.function
            assert step.function.split(".")[0] in ("jobs", "tidal")


@pytest.mark.parametrize("name", sorted(project_modules(REPO_ROOT)))
def test_every_file_opens_with_a_docstring_that_says_what_it_is_for(name):
    tree = ast.parse(project_modules(REPO_ROOT)[name].read_text())
    docstring = ast.get_docstring(tree)
    assert docstring and len(docstring.split()) >= 5, f"{name} has no opening docstring that says what it is for"


def test_no_function_outside_models_is_longer_than_the_limit():
    """Long functions are split into named steps (models/ has its own issue)."""
    too_long = []
    for name, path in project_modules(REPO_ROOT).items():
        if name.startswith("models"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {lines} lines")
    assert too_long == []
