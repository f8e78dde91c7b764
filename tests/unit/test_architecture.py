"""The layers of pyproject.toml's [tool.retrain.architecture]: no upward import, no forbidden library, no cycle."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from engine.codedeps import PACKAGES, imports_of

REPO = Path(__file__).resolve().parents[2]
CONTRACTS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["retrain"]["architecture"]


def project_modules() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = project_modules()


def project_imports(name: str) -> set[str]:
    """The project modules `name` imports (function-level imports included, TYPE_CHECKING excluded)."""
    found = set()
    for imported in imports_of(MODULES[name])[0]:
        while imported and imported not in MODULES:
            imported = imported.rpartition(".")[0]
        if imported and imported != name:
            found.add(imported)
    return found


def layer_index(name: str, layers: list[str]) -> int | None:
    """Which layer (0 = top) a module belongs to; a layer entry may join siblings with `|`."""
    for index, entry in enumerate(layers):
        for member in (m.strip() for m in entry.split("|")):
            if name == member or name.startswith(member + "."):
                return index
    return None


def upward_imports(graph: dict[str, set[str]] | None = None) -> list[str]:
    """Every import from a lower layer into a higher one, top-level packages and retrain's own layers."""
    graph = graph if graph is not None else {name: project_imports(name) for name in MODULES}
    ignored = {tuple(s.strip() for s in rule.split("->")) for rule in CONTRACTS["ignore_imports"]}
    problems = []
    for name, targets in graph.items():
        for target in sorted(targets):
            if (name, target) in ignored:
                continue
            for layers in (CONTRACTS["layers"], CONTRACTS["retrain_layers"]):
                mine, theirs = layer_index(name, layers), layer_index(target, layers)
                if mine is not None and theirs is not None and theirs < mine:
                    problems.append(f"{name} -> {target} (a {layers[mine]!r} module imports {layers[theirs]!r})")
    return problems


def test_no_module_imports_a_layer_above_it() -> None:
    assert not upward_imports(), "upward imports:\n  " + "\n  ".join(upward_imports())


@pytest.mark.parametrize("package", sorted(CONTRACTS["forbidden"]))
def test_forbidden_libraries_never_appear(package: str) -> None:
    banned = set(CONTRACTS["forbidden"][package])
    hits = [
        f"{name} imports {imported}"
        for name, path in MODULES.items()
        if name == package or name.startswith(package + ".")
        for imported in imports_of(path)[0]
        if imported.split(".")[0] in banned
    ]
    assert not hits, f"{package}/ must not import {sorted(banned)}:\n  " + "\n  ".join(hits)


def test_the_import_graph_has_no_cycles() -> None:
    graph = {name: project_imports(name) for name in MODULES}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert not cycles, "import cycles:\n  " + "\n  ".join(" -> ".join(c) for c in cycles)


def test_the_checker_catches_an_upward_import() -> None:
    """The contract is live: the engine importing the wiring would be reported."""
    assert layer_index("engine.runner", CONTRACTS["layers"]) > layer_index("flows.cli", CONTRACTS["layers"])
    assert layer_index("retrain.metrics", CONTRACTS["retrain_layers"]) == len(CONTRACTS["retrain_layers"]) - 1
    found = upward_imports({"engine.runner": {"flows.cli"}, "retrain.data.split": {"retrain.models.tuning"}})
    assert len(found) == 2 and "engine.runner -> flows.cli" in found[0], found
    assert not upward_imports({"retrain.config": {"retrain.models.families"}}), "the declared exception holds"


def test_every_package_logs_to_the_prefect_ui() -> None:
    """Prefect forwards only the loggers it is told about: every package of ours must be in the list."""
    from flows.env import OUR_LOGGERS, RUN_ENV

    assert set(OUR_LOGGERS) == set(PACKAGES), "flows/env.py OUR_LOGGERS must name every package"
    assert RUN_ENV["PREFECT_LOGGING_EXTRA_LOGGERS"].split(",") == list(OUR_LOGGERS)
    assert f'PREFECT_LOGGING_EXTRA_LOGGERS: "{",".join(OUR_LOGGERS)}"' in (REPO / "prefect.yaml").read_text()
