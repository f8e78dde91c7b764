"""A stage's code identity, derived rather than listed: the project files its stage module imports, transitively.

The import graph is read from the source (every `import` and `from ... import`, also inside functions, where
the stage modules import their heavy libraries; not under `if TYPE_CHECKING:`), so editing any module a stage
uses changes that stage's cache key and dvc.yaml deps, and editing a module no stage imports changes none.
A module may name data files it reads at run time (a template, say) in a module-level `RESOURCES` tuple of
paths relative to its folder; they count as its code.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable
from pathlib import Path

PACKAGES = ("retrain", "tasks", "engine", "adapters", "flows")
"""Top-level packages of the project: imports of anything else (libraries) are the lock file's business."""


def module_file(root: Path, module: str) -> Path | None:
    """The file that defines a project module (a package's `__init__.py`), or None outside the project."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _is_type_checking(node: ast.If) -> bool:
    """`if TYPE_CHECKING:` / `if typing.TYPE_CHECKING:`: imports there never run."""
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST) -> Iterable[ast.AST]:
    """Every node below `node`, skipping the bodies of TYPE_CHECKING blocks."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            yield from (n for branch in child.orelse for n in (branch, *_walk(branch)))
            continue
        yield child
        yield from _walk(child)


@functools.lru_cache(maxsize=512)
def _parsed(path: Path, mtime_ns: int, size: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(imported module names, RESOURCES entries) of one source file; cached on its stat, so edits are seen."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _package_of(path)
    names: list[str] = []
    resources: list[str] = []
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package)
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "RESOURCES" for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError as exc:
                message = f"{path}: RESOURCES must be a tuple of string literals (paths beside the module)"
                raise ValueError(message) from exc
            resources.extend(str(v) for v in value)
    return tuple(names), tuple(resources)


def _package_of(path: Path) -> str:
    """Dotted package of a source file, from the folders holding `__init__.py` above it."""
    parts: list[str] = []
    folder = path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts)


def _absolute(module: str | None, level: int, package: str) -> str:
    """The absolute name of a (possibly relative) `from` import."""
    if level == 0:
        return module or ""
    base = package.split(".")[: len(package.split(".")) - (level - 1)] if package else []
    return ".".join([*base, *([module] if module else [])])


def imports_of(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What one file imports and which data files it declares (see module docstring)."""
    stat = path.stat()
    return _parsed(path, stat.st_mtime_ns, stat.st_size)


def code_files(root: Path, module: str) -> tuple[str, ...]:
    """Every project file `module` needs to run, itself included, relative to `root` and sorted.

    Importing `a.b.c` runs `a/__init__.py` and `a/b/__init__.py` too, so parent packages count.
    """
    seen: set[str] = set()
    files: set[Path] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(root, name)
        if path is None:
            continue
        files.add(path)
        parts = name.split(".")
        pending.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        imported, resources = imports_of(path)
        pending.extend(imported)
        files.update(path.parent / r for r in resources)
    return tuple(sorted(str(f.relative_to(root)) for f in files))
