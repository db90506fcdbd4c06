"""The house keeps its shape: one folder per stage, each importing only the stages below it, no import circle,
no module over 500 lines and no function over 80 (docs/architecture.md draws it).

The imports are read with `ast`, all of them: at the top of a module, inside a function, under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "digest"
# The stages from the bottom up; a module may import its own stage and those below. Core is the files directly
# in digest/ that hold records, errors and helpers every stage uses.
STAGES = ["core", "settings", "store", "feeds", "issue", "send", "web", "jobs", "sample", "cli", "api"]
CORE = {"models", "errors", "text", "urls", "retry", "credentials", "lock"}
TOP = {"jobs": "jobs", "__init__": "api", "__main__": "api"}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "api"
    if len(parts) == 2 and not (PACKAGE / parts[1]).is_dir():
        return "core" if parts[1] in CORE else TOP.get(parts[1], f"unplaced module {module}")
    return parts[1]


def imports(module: str) -> dict[str, int]:
    """The digest modules that `module` imports, each with the line of its first import."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "digest":
            assert node.module is not None
            if node.module == "digest" and [alias.name for alias in node.names] == ["__version__"]:
                continue  # the version, from the root package that every import of digest loads anyway
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.setdefault(submodule if submodule in MODULES else node.module, node.lineno)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "digest":
                    found.setdefault(alias.name, node.lineno)
    found.pop(module, None)
    return found


GRAPH = {module: imports(module) for module in MODULES}


def test_every_module_has_a_stage_and_every_stage_says_what_it_does():
    assert not [module for module in MODULES if stage(module) not in STAGES]
    for folder in sorted(path for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()):
        docstring = ast.get_docstring(ast.parse((folder / "__init__.py").read_text(encoding="utf-8")))
        assert docstring and len(docstring) > 80, f"digest/{folder.name}/__init__.py: say what the stage does"


def test_no_stage_imports_a_stage_above_it():
    upward = [
        f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}: {stage(module)} imports {target} ({stage(target)})"
        for module, targets in GRAPH.items()
        for target, line in targets.items()
        if STAGES.index(stage(target)) > STAGES.index(stage(module))
    ]
    assert not upward, "\n".join(upward)


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components: each of more than one module is a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while (member := stack.pop()) != module:
                component.append(member)
            if component:
                found.append(sorted([module, *component]))

    for module in graph:
        if module not in index:
            visit(module)
    return found


def test_there_is_no_import_circle():
    assert not circles(GRAPH)


def test_the_checks_see_a_circle_and_an_upward_import():
    """The checks are only as good as the graph they read: a circle of three is found, and known imports
    (a lazy one inside a function included) are in the graph with their stages."""
    assert circles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]
    assert "digest.store.db" in GRAPH["digest.store.posts"]
    assert "digest.feeds.collect" in GRAPH["digest.cli.week"]  # imported inside the command
    assert STAGES.index(stage("digest.cli.app")) > STAGES.index(stage("digest.send.smtp"))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_500_lines_nor_a_function_over_80(module):
    text = MODULES[module].read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{module}: {len(text.splitlines())} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{module}: {', '.join(long)}"
