"""Make a rendered GX Data Docs site self-contained: every page works offline and as a single file.

GX's page templates load Bootstrap, jQuery, bootstrap-table, a datepicker, Font Awesome and Vega from CDNs, so
offline, and in MLflow's artifact viewer (one HTML file in a sandboxed iframe that resolves no relative link),
the index table stays blank and the status icons are missing. After GX renders the site, each page gets the
vendored copies in `docs_assets/` inlined in place of the CDN tags (each file checked against the sha256 in
`docs_assets/assets.json` first), GX's own favicon and logo as data: URIs, and the site's `static/` folder
(4 MB of images no page needs any more) is removed. The newest validation-result page moves from
`validations/<suite>/<run>/<time>/<batch>.html` to the site root as `validation_result.html`, the one file
to open (the index links to it there).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import mimetypes
import posixpath
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).with_name("docs_assets")
MANIFEST = ASSETS_DIR / "assets.json"
RESULT_PAGE = "validation_result.html"
"""The newest validation-result page, moved to the site root with its links fixed."""

GX_IMAGES = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/"
"""Where GX's navbar takes its logo from; the site's own static/images/ holds the same file names."""

_SCRIPT = re.compile(r"<script\b[^>]*?\bsrc\s*=\s*\"([^\"]+)\"[^>]*>\s*</script>", re.I)
_LINK = re.compile(r"<link\b[^>]*>", re.I)
_IMG_SRC = re.compile(r"(<img\b[^>]*?\bsrc\s*=\s*\")([^\"]+)(\")", re.I)
_ATTR = re.compile(r"\b(href|rel)\s*=\s*\"([^\"]*)\"", re.I)
_DARK_MEDIA = re.compile(r"@media\s*\(\s*prefers-color-scheme\s*:\s*dark\s*\)\s*\{", re.I)
_ANCHOR_HREF = re.compile(r"(<a\b[^>]*?\bhref\s*=\s*\")([^\"#][^\"]*)(\")", re.I)
_EXTERNAL = re.compile(
    r"<(?:script|img|iframe|source|embed)\b[^>]*?\bsrc\s*=\s*[\"']?\s*((?:https?:)?//[^\"'\s>]+)"
    r"|<link\b[^>]*?\bhref\s*=\s*[\"']?\s*((?:https?:)?//[^\"'\s>]+)"
    r"|@import\s+(?:url\(\s*)?[\"']?\s*((?:https?:)?//[^\"')\s;]+)"
    r"|url\(\s*[\"']?\s*((?:https?:)?//[^\"')\s]+)",
    re.I,
)


class DocsAssetError(RuntimeError):
    """A vendored Data Docs asset is missing or differs from the sha256 recorded in docs_assets/assets.json."""


@dataclass(frozen=True)
class Asset:
    """One vendored file, read and verified, and the CDN URLs it stands in for."""

    name: str
    package: str
    version: str
    text: str

    @property
    def origin(self) -> str:
        """`jquery.min.js: jquery 3.7.1`, for the comment above the inlined code."""
        return f"{self.name}: {self.package} {self.version}".rstrip()


@dataclass(frozen=True)
class Bundle:
    """The verified assets by the URL they replace, and the URLs dropped on purpose (with why)."""

    by_url: dict[str, Asset]
    dropped: dict[str, str]


def load_bundle(assets_dir: Path = ASSETS_DIR) -> Bundle:
    """Read every asset of the manifest and check its sha256 (~1.4 MB, a few ms); raise on any mismatch."""
    manifest = json.loads((assets_dir / MANIFEST.name).read_text())
    by_url: dict[str, Asset] = {}
    for name, entry in manifest["assets"].items():
        path = assets_dir / name
        if not path.is_file():
            raise DocsAssetError(f"Data Docs asset {path} is missing (listed in {MANIFEST.name})")
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry["sha256"]:
            raise DocsAssetError(
                f"Data Docs asset {path} has sha256 {digest}, {MANIFEST.name} records {entry['sha256']} "
                f"({entry['package']} {entry['version']}): the vendored file was changed; restore it or "
                "re-vendor it as docs/validation.md describes"
            )
        asset = Asset(name, entry["package"], entry["version"], data.decode("utf-8"))
        by_url |= dict.fromkeys(entry["replaces"], asset)
    return Bundle(by_url, dict(manifest["dropped"]))


def external_references(page: str) -> list[str]:
    """Every URL a page would fetch from the network: script/img src, link href, @import and CSS url()."""
    return [next(group for group in match.groups() if group) for match in _EXTERNAL.finditer(page)]


def _data_uri(path: Path) -> str:
    """A small local file (favicon, logo) as a data: URI."""
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _inline_script(asset: Asset) -> str:
    """A vendored script as an inline <script>, its origin named in a comment."""
    code = re.sub(r"</(script)", r"<\\/\1", asset.text, flags=re.I)
    return f"<script>/* {asset.origin}, bundled by retrain */\n{code}\n</script>"


def _inline_style(asset: Asset) -> str:
    """A vendored stylesheet as an inline <style>, its origin named in a comment."""
    css = re.sub(r"</(style)", r"<\\/\1", asset.text, flags=re.I)
    return f"<style>/* {asset.origin}, bundled by retrain */\n{css}\n</style>"


def _drop_dark_mode(page: str) -> str:
    """Remove GX's `@media (prefers-color-scheme: dark)` blocks: without the dark Bootstrap theme they clash."""
    while match := _DARK_MEDIA.search(page):
        depth, end = 1, match.end()
        while depth and end < len(page):
            depth += {"{": 1, "}": -1}.get(page[end], 0)
            end += 1
        page = page[: match.start()] + page[end:]
    return page


def _local(page_dir: Path, site: Path, ref: str) -> Path | None:
    """The file a relative reference of a page points to, if it lies inside the site and exists."""
    target = (page_dir / ref.split("?", 1)[0]).resolve()
    return target if target.is_file() and target.is_relative_to(site.resolve()) else None


def inline_page(page: str, page_dir: Path, site: Path, bundle: Bundle) -> str:
    """One page with every CDN script/stylesheet inlined, dropped ones removed, and GX's images as data: URIs."""

    def script(match: re.Match[str]) -> str:
        url = match.group(1)
        if url in bundle.by_url:
            return _inline_script(bundle.by_url[url])
        if url in bundle.dropped:
            return f"<!-- retrain: not bundled: {url} -->"
        return match.group(0)

    def link(match: re.Match[str]) -> str:
        attrs = {k.lower(): v for k, v in _ATTR.findall(match.group(0))}
        href, rel = attrs.get("href", ""), attrs.get("rel", "").lower()
        if href in bundle.by_url:
            return _inline_style(bundle.by_url[href])
        if href in bundle.dropped:
            return f"<!-- retrain: not bundled: {href} -->"
        if "icon" in rel and not re.match(r"(?:[a-z]+:|//)", href, re.I):
            local = _local(page_dir, site, href)
            return match.group(0).replace(f'"{href}"', f'"{_data_uri(local)}"') if local else ""
        return match.group(0)

    def image(match: re.Match[str]) -> str:
        src = match.group(2)
        if not src.startswith(GX_IMAGES):
            return match.group(0)
        local = site / "static" / "images" / src.removeprefix(GX_IMAGES).split("?", 1)[0]
        return f"{match.group(1)}{_data_uri(local) if local.is_file() else ''}{match.group(3)}"

    page = _drop_dark_mode(page)
    page = _SCRIPT.sub(script, page)
    page = _LINK.sub(link, page)
    return _IMG_SRC.sub(image, page)


def _rebase_links(page: str, from_dir: str) -> str:
    """A page's relative <a href> links rewritten for a copy of the page at the site root."""

    def rebase(match: re.Match[str]) -> str:
        href = match.group(2)
        if re.match(r"(?:[a-z][a-z0-9+.-]*:|//|/)", href, re.I):
            return match.group(0)
        return f"{match.group(1)}{posixpath.normpath(posixpath.join(from_dir, href))}{match.group(3)}"

    return _ANCHOR_HREF.sub(rebase, page)


def make_self_contained(site: Path, bundle: Bundle | None = None) -> dict[str, int]:
    """Inline every page of a rendered site, move the newest result to `validation_result.html`, drop `static/`.

    Returns each page's size in bytes.

    Raises `DocsAssetError` if a vendored file fails its sha256 check. A CDN URL the manifest does not know
    (a GX upgrade changed its templates) is left in place with a warning: the page then still works online.
    """
    bundle = bundle or load_bundle()
    results = sorted(site.glob("validations/**/*.html"), key=lambda p: p.parent.name)
    if results:  # moved before inlining, so only GX's own links are rebased, never text inside a library
        newest = results[-1]
        from_dir = newest.parent.relative_to(site).as_posix()
        moved = _rebase_links(newest.read_text(encoding="utf-8"), from_dir)
        (site / RESULT_PAGE).write_text(moved, encoding="utf-8")
        newest.unlink()
        for folder in newest.parents[: len(newest.relative_to(site).parts) - 1]:  # its now empty folders
            if not any(folder.iterdir()):
                folder.rmdir()
        index = site / "index.html"
        if index.is_file():  # the index table's row link (a JS string) now leads to the moved page
            text = index.read_text(encoding="utf-8")
            index.write_text(text.replace(f"'{newest.relative_to(site).as_posix()}'", f"'{RESULT_PAGE}'"))
    for path in sorted(site.rglob("*.html")):
        text = inline_page(path.read_text(encoding="utf-8"), path.parent, site, bundle)
        path.write_text(text, encoding="utf-8")
        if unknown := external_references(text):
            logger.warning("Data Docs page %s still loads %s (not in %s)", path.name, unknown, MANIFEST.name)
    shutil.rmtree(site / "static", ignore_errors=True)
    return {p.relative_to(site).as_posix(): p.stat().st_size for p in sorted(site.rglob("*.html"))}
