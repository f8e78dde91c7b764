"""The page template `dvc plots show` fills, with Vega inlined: the plots then render offline.

dvc-render's default page (`dvc_render/html.py` PAGE_HTML) gets three `<script src>` tags from jsDelivr through its
`{scripts}` placeholder (`dvc_render/vega.py` VegaRenderer.SCRIPTS), so without network access `dvc plots show`
writes a blank page. `.dvc/config` sets `plots.html_template = plots/offline.html`: that file is built here from the
same page with the vendored copies of those three files in `docs_assets/` inlined (each checked against the sha256
in `docs_assets/assets.json` first; `DocsAssetError` on a mismatch) and no `{scripts}` placeholder, so DVC adds no
CDN tag. `{plot_divs}` (and `{refresh_tag}`) stay for DVC to fill.

Regenerate after re-vendoring: `.venv/bin/python -m retrain.data.plots_page` (`--check` exits 1 when the file is
stale instead). tests/unit/test_plots_page.py fails when the committed file differs from what this builds.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from retrain.data.datadocs import ASSETS_DIR, MANIFEST, Asset, DocsAssetError, load_bundle
from retrain.paths import project_root

TEMPLATE = Path(".dvc") / "plots" / "offline.html"
"""Where the page lives, relative to the project root; `.dvc/config` names it relative to `.dvc/`."""

DVC_SCRIPTS = (
    "https://cdn.jsdelivr.net/npm/vega@5.20.2",
    "https://cdn.jsdelivr.net/npm/vega-lite@5.2.0",
    "https://cdn.jsdelivr.net/npm/vega-embed@6.18.2",
)
"""The URLs of dvc-render 1.x's VegaRenderer.SCRIPTS, in load order; assets.json maps each to its vendored file."""

DVC_PAGE_HTML = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <title>DVC Plot</title>
    {scripts}
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>"""
"""dvc-render's PAGE_HTML, verbatim (the test compares it with the installed dvc-render's)."""

PLACEHOLDERS = ("{scripts}", "{plot_divs}", "{refresh_tag}")
"""What dvc-render replaces in a template (str.replace, every occurrence): inlined code must contain none."""

_SOURCE_MAP = re.compile(r"\n//# sourceMappingURL=[^\n]*\s*\Z")


def _script(asset: Asset) -> str:
    """One library as an inline <script>, named in a comment, without its source-map comment (no .map ships)."""
    code = _SOURCE_MAP.sub("", asset.text)
    found = [s for s in (*PLACEHOLDERS, "<!--") if s in code]
    if found:
        raise DocsAssetError(f"{asset.name} contains {found}: inlined, dvc-render or the HTML parser would break it")
    code = re.sub(r"</(script)", r"<\\/\1", code, flags=re.I)
    notice = f"{asset.origin}, BSD-3-Clause (retrain/data/docs_assets/licenses/), bundled by retrain"
    return f"<script>/* {notice} */\n{code}\n</script>"


def build_page(assets_dir: Path = ASSETS_DIR) -> str:
    """dvc-render's page with `{scripts}` replaced by the verified, inlined Vega, Vega-Lite and Vega-Embed."""
    bundle = load_bundle(assets_dir)  # checks every vendored file's sha256; raises DocsAssetError on a mismatch
    missing = [url for url in DVC_SCRIPTS if url not in bundle.by_url]
    if missing:
        raise DocsAssetError(f"{MANIFEST.name} has no vendored file replacing {missing}")
    scripts = "\n    ".join(_script(bundle.by_url[url]) for url in DVC_SCRIPTS)
    return DVC_PAGE_HTML.replace("{scripts}", scripts)


def main(argv: list[str] | None = None) -> int:
    """Write the template (default `<project root>/.dvc/plots/offline.html`), or with --check report whether stale."""
    parser = argparse.ArgumentParser(prog="python -m retrain.data.plots_page", description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", type=Path, help=f"default: <project root>/{TEMPLATE.as_posix()}")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the file differs")
    args = parser.parse_args(argv)
    output = args.output or project_root() / TEMPLATE
    page = build_page()
    current = output.read_text(encoding="utf-8") if output.is_file() else None
    if args.check:
        state = "up to date" if current == page else "STALE: rerun python -m retrain.data.plots_page"
        sys.stdout.write(f"{output}: {state}\n")
        return 0 if current == page else 1
    if current != page:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(page, encoding="utf-8")
    size = len(page.encode("utf-8"))
    sys.stdout.write(f"{output}: {size:,} bytes ({'unchanged' if current == page else 'written'})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
