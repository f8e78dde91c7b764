"""`dvc plots show` renders offline: .dvc/plots/offline.html is dvc-render's page with Vega inlined, and DVC uses it."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from dvc_render.html import PAGE_HTML
from dvc_render.vega import VegaRenderer

from retrain.data.datadocs import ASSETS_DIR, DocsAssetError, external_references
from retrain.data.plots_page import DVC_PAGE_HTML, DVC_SCRIPTS, PLACEHOLDERS, TEMPLATE, build_page, main

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / TEMPLATE
LIBRARIES = ("vega.min.js: vega 5.20.2", "vega-lite.min.js: vega-lite 5.2.0", "vega-embed.min.js: vega-embed 6.18.2")


def test_the_committed_template_is_what_the_generator_builds() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == build_page(), (
        f"{TEMPLATE} is stale: run .venv/bin/python -m retrain.data.plots_page"
    )
    assert main(["--check", str(COMMITTED)]) == 0


def test_dvc_config_points_plots_at_the_template() -> None:
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    assert REPO / ".dvc" / config["plots"]["html_template"] == COMMITTED


def test_the_template_is_dvc_renders_page_with_the_cdn_scripts_inlined() -> None:
    assert DVC_PAGE_HTML == PAGE_HTML, "dvc-render's PAGE_HTML changed: update DVC_PAGE_HTML and regenerate"
    urls = tuple(re.findall(r'<script src="([^"]+)"></script>', VegaRenderer.SCRIPTS))
    assert urls == DVC_SCRIPTS, f"dvc-render now loads {urls}: vendor those versions (docs_assets/README.md)"
    page = COMMITTED.read_text(encoding="utf-8")
    assert "{scripts}" not in page, "with {scripts} DVC would add its jsDelivr tags again"
    assert page.count("{plot_divs}") == 1 and page.count("{refresh_tag}") == 1
    head, tail = PAGE_HTML.split("{scripts}")
    assert page.startswith(head) and page.endswith(tail)
    assert re.findall(r"<script\b[^>]*>", page) == ["<script>"] * 3, "three inline scripts, no src"
    found = [re.search(rf"<script>/\* {re.escape(lib)}\b", page) for lib in LIBRARIES]
    assert all(found) and [m.start() for m in found] == sorted(m.start() for m in found), "vega, vega-lite, embed"
    assert external_references(page) == [] and not re.search(r"\b(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//", page)


def test_a_changed_vendored_library_fails_loudly(tmp_path: Path) -> None:
    assets = tmp_path / "docs_assets"
    shutil.copytree(ASSETS_DIR, assets)
    (assets / "vega.min.js").write_bytes((assets / "vega.min.js").read_bytes().replace(b"5.20.2", b"5.20.3", 1))
    with pytest.raises(DocsAssetError, match=r"vega\.min\.js has sha256 [0-9a-f]{64}, assets\.json records 4794d0"):
        build_page(assets)
    manifest = json.loads((assets / "assets.json").read_text())
    shutil.copy2(ASSETS_DIR / "vega.min.js", assets / "vega.min.js")
    manifest["assets"]["vega-embed.min.js"]["replaces"] = []
    (assets / "assets.json").write_text(json.dumps(manifest))
    with pytest.raises(DocsAssetError, match=r"no vendored file replacing \['https://cdn.jsdelivr.net/npm/vega-embed"):
        build_page(assets)
    for placeholder in PLACEHOLDERS:
        assert placeholder not in build_page().split("<script>", 1)[1].rsplit("</script>", 1)[0]


@pytest.mark.slow
def test_dvc_plots_show_writes_an_offline_page_with_the_template(tmp_path: Path) -> None:
    """Real DVC in a throwaway git + DVC repo: the page it writes carries the plot and inlined Vega, no CDN."""
    run = lambda *cmd: subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)  # noqa: E731
    assert run("git", "init", "-q").returncode == 0
    assert run("dvc", "init", "-q").returncode == 0
    (tmp_path / ".dvc" / "plots").mkdir()
    shutil.copy2(COMMITTED, tmp_path / ".dvc" / "plots" / "offline.html")
    with (tmp_path / ".dvc" / "config").open("a") as config:
        config.write("[plots]\n    html_template = plots/offline.html\n")
    (tmp_path / "loss.json").write_text(json.dumps([{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}]))
    (tmp_path / "dvc.yaml").write_text("plots:\n  - loss.json:\n      x: step\n      y: loss\n")
    shown = run("dvc", "plots", "show", "-o", "out")
    assert shown.returncode == 0, shown.stderr
    page = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert '<div id = "loss_json">' in page and "vegaEmbed('#loss_json', spec);" in page, page[-2000:]
    assert '"loss": 0.5' in page or '"loss":0.5' in page, "the plot's data is in the page"
    assert "https://cdn.jsdelivr.net" not in page and external_references(page) == []
    assert page.startswith(PAGE_HTML.split("{scripts}")[0].replace("{refresh_tag}", ""))
    assert all(f"<script>/* {lib}" in page for lib in LIBRARIES)
