"""Tracked files hold no absolute machine paths: the shared datasets are found as `../shared` from the repo root."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:work|home|root|Users|tmp)/[\w.-]+")
TEXT = {".py", ".md", ".yaml", ".yml", ".toml", ".cfg", ".txt", ".json", ".sh", ""}


def test_no_tracked_file_holds_an_absolute_machine_path() -> None:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert listed, "git ls-files listed nothing: is the repo a git checkout?"
    hits = []
    for rel in listed:
        path = REPO / rel
        if path.suffix not in TEXT or not path.is_file() or rel.endswith(".lock"):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                hits.append(f"{rel}:{number}: {line.strip()[:100]}")
    assert not hits, "absolute machine paths (use paths relative to the repo root):\n  " + "\n  ".join(hits)
