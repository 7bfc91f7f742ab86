"""The Data Docs site of a validation run, made to render offline.

GX writes the pages; this module points their CSS/JS at the site's static/vendor/ (copied from pinned XStatic
packages), drops what is not needed offline, and writes the site's index as a static table of the suites' results.
"""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path
from typing import Any, NamedTuple


def docs_page(context: Any, resource_identifier: Any) -> Path:
    """The file of a validation result's (or suite's) page in the tidal site."""
    from urllib.parse import unquote, urlparse

    url = context.get_docs_sites_urls(resource_identifier=resource_identifier, site_name="tidal")[0]["site_url"]
    return Path(unquote(urlparse(url).path))


class SiteEntry(NamedTuple):
    """One suite's validation result in a Data Docs site, and the site's pages that show it."""
    suite: str
    validation_page: Path
    suite_page: Path
    validation: Any


# GX's page templates load these stylesheets and scripts from CDNs. Each maps to the file under the site's
# static/vendor/ that replaces it (copied from a pinned XStatic package, VENDOR_FILES), or to None: the tag is dropped
# because what it served is in another file (Popper is inside Bootstrap's bundle) or is not needed offline.
# bootstrap-table (and its date-picker filter) only draws GX's own index, which write_site_index replaces with a
# static table, since no PyPI package ships bootstrap-table; the other pages' tables are plain Bootstrap tables.
# bootstrap-dark only restyles the pages for a dark desktop theme. A URL not listed stays as it is (the offline
# test catches a GX upgrade that adds one).
VENDOR_ASSETS: dict[str, str | None] = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap/css/bootstrap.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap/js/bootstrap.bundle.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/": None,
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": "font-awesome/css/all.min.css",
    "https://unpkg.com/bootstrap-table@": None,
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/": None,
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@": None,
}


# Vega draws the charts of distribution expectations; tidal's suites have none, and no PyPI package ships Vega 5 and
# Vega-Lite 5. So a page that embeds no chart drops these scripts, and one that does keeps them: the one optional
# online asset (offline, the page renders styled, without its charts).
OPTIONAL_CDN_ASSETS = ("https://cdn.jsdelivr.net/npm/vega@", "https://cdn.jsdelivr.net/npm/vega-lite@",
                       "https://cdn.jsdelivr.net/npm/vega-embed@")


# site's static/vendor/<folder>/ <- the XStatic package and the files or folders under its BASE_DIR that pages use
VENDOR_FILES = {
    "bootstrap": ("xstatic.pkg.bootstrap", ["css/bootstrap.min.css", "js/bootstrap.bundle.min.js"]),
    "jquery": ("xstatic.pkg.jquery", ["jquery.min.js"]),
    "font-awesome": ("xstatic.pkg.font_awesome", ["css/all.min.css", "webfonts"]),
}


ASSET_TAG = re.compile(r'<(?:script|link)\b[^>]*?\b(?:src|href)="(?P<url>https?://[^"]+)"[^>]*>(?:\s*</script>)?')


SUBRESOURCE_INTEGRITY = re.compile(r'\s(?:integrity|crossorigin)(?:="[^"]*")?')


# The navbar logo (an <img>, and a background in GX's inline style): GX ships the same logo in static/images/.
GX_WEB_ASSET = re.compile(
    r'https://great-expectations-web-assets\.s3\.us-east-2\.amazonaws\.com/(?P<name>[\w.-]+)(?:\?[^"\')]*)?')


SITE_STATIC_LINK = re.compile(r'(?P<attr>\b(?:src|href)=")(?:\.\./)+static/')


def make_site_offline(docs_dir: Path) -> None:
    """Copy the pages' CSS/JS next to the site and point every page at them with relative links."""
    import importlib

    for folder, (module, names) in VENDOR_FILES.items():
        base = Path(importlib.import_module(module).BASE_DIR)
        for name in names:
            target = docs_dir / "static" / "vendor" / folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if (base / name).is_dir():
                shutil.copytree(base / name, target, dirs_exist_ok=True)
            else:
                shutil.copyfile(base / name, target)
    for page in docs_dir.rglob("*.html"):
        page.write_text(offline_html(page.read_text(), page.relative_to(docs_dir)))


def offline_html(text: str, page: Path) -> str:
    """A page's HTML with its CDN stylesheets, scripts and logo replaced by the site's own (page: relative to the
    site's root)."""
    root = "/".join([".."] * (len(page.parts) - 1)) or "."
    has_charts = "vegaEmbed(" in text

    def local_tag(match: re.Match) -> str:
        url = match.group("url")
        if url.startswith(OPTIONAL_CDN_ASSETS):
            return match.group(0) if has_charts else ""
        prefix = next((p for p in VENDOR_ASSETS if url.startswith(p)), None)
        if prefix is None:
            return match.group(0)
        if VENDOR_ASSETS[prefix] is None:
            return ""
        # The SRI hashes are the CDN files'; the local file is another build of the same library.
        local = match.group(0).replace(url, f"{root}/static/vendor/{VENDOR_ASSETS[prefix]}")
        return SUBRESOURCE_INTEGRITY.sub("", local)

    def local_image(match: re.Match) -> str:
        name = "logo-long.png" if match.group("name") == "full_logo_dark.png" else match.group("name")
        return f"{root}/static/images/{name}"

    text = GX_WEB_ASSET.sub(local_image, ASSET_TAG.sub(local_tag, text))
    # GX links a validation page's favicon one level short of the site's root.
    return SITE_STATIC_LINK.sub(lambda m: f"{m.group('attr')}{root}/static/", text)


SITE_INDEX = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Data Docs: {title}</title>
  <link rel="icon" href="static/images/favicon.ico">
  <link rel="stylesheet" href="static/vendor/bootstrap/css/bootstrap.min.css">
  <link rel="stylesheet" href="static/vendor/font-awesome/css/all.min.css">
</head>
<body>
<nav class="navbar sticky-top border-bottom bg-white" style="height: 70px">
  <img src="static/images/logo-long.png" alt="Great Expectations" style="width: auto; height: 50px">
  <span class="navbar-text">{title}</span>
</nav>
<main class="container-fluid mt-4">
  <h1 class="h4">Validation Results</h1>
  <table class="table table-sm table-hover">
    <thead><tr><th>Status</th><th>Expectation Suite</th><th>Data Asset</th><th>Run Name</th><th>Run Time</th>
      <th>Failed Expectations</th></tr></thead>
    <tbody>
{rows}
    </tbody>
  </table>
  <h2 class="h4 mt-4">Expectation Suites</h2>
  <ul>
{suites}
  </ul>
</main>
</body>
</html>
"""


def write_site_index(docs_dir: Path, entries: list[SiteEntry]) -> None:
    """The site's index.html: a static table of the suites' results linking each one's pages (GX's own index draws
    its table with bootstrap-table, which cannot be served offline; see VENDOR_ASSETS)."""
    from urllib.parse import quote

    def link(page: Path, text: str) -> str:
        return f'<a href="{quote(page.relative_to(docs_dir).as_posix())}">{html.escape(text)}</a>'

    rows, suites = [], []
    for e in entries:
        run, stats = e.validation.meta["run_id"], e.validation.statistics
        status = ('<i class="fas fa-check-circle text-success"></i> Succeeded' if e.validation.success
                  else '<i class="fas fa-times text-danger"></i> Failed')
        rows.append(f"      <tr><td>{status}</td><td>{link(e.validation_page, e.suite)}</td>"
                    f"<td>{html.escape(str(e.validation.asset_name))}</td><td>{html.escape(run.run_name or '')}</td>"
                    f"<td>{run.run_time:%Y-%m-%d %H:%M:%S} UTC</td><td>{stats['unsuccessful_expectations']} of "
                    f"{stats['evaluated_expectations']}</td></tr>")
        suites.append(f"    <li>{link(e.suite_page, e.suite)}</li>")
    title = f"run {entries[0].validation.meta['run_id'].run_name}" if entries else "no validations"
    (docs_dir / "index.html").write_text(SITE_INDEX.format(title=html.escape(title), rows="\n".join(rows),
                                                           suites="\n".join(suites)))
