"""The one place that knows where the project root is, so nothing depends on the current directory."""

from __future__ import annotations

import os
from pathlib import Path

ROOT_ENV = "RETRAIN_ROOT"


def project_root() -> Path:
    """Project root: $RETRAIN_ROOT if set, else the nearest parent of the cwd holding dvc.yaml.

    Falls back to the checkout that holds this package, so the CLI works from any directory.
    """
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file() and (candidate / "params.yaml").is_file():
            return candidate
    return Path(__file__).resolve().parent.parent


def resolve(root: Path, path: str | Path) -> Path:
    """A params path, relative to the project root unless absolute."""
    p = Path(path)
    return p if p.is_absolute() else root / p
