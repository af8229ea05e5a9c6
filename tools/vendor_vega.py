"""Rebuild `.dvc/plots_template.html`: the page `dvc plots show` writes, with vega, vega-lite and vega-embed inlined.

DVC fills an HTML template (`plots.html_template` in `.dvc/config`) by replacing `{plot_divs}` with one `<div>` per
plot (its Vega-Lite spec and data inline, then a `vegaEmbed(...)` call), `{refresh_tag}` with an optional
`<meta http-equiv="refresh">` and `{scripts}` with `<script src=...>` tags that load the three libraries from a CDN,
so the default page is blank offline. This template has no `{scripts}` placeholder: it carries the minified builds of
the versions dvc-render's `VegaRenderer.SCRIPTS` names, taken from the npm registry's tarballs.

    python tools/vendor_vega.py            # download, verify both hashes of every library, write the template
    python tools/vendor_vega.py --check    # the same, but compare with the committed template instead of writing

The output is byte-for-byte reproducible: no timestamps, files read in a fixed order. A library's tarball must match
the registry's sha512 integrity pinned below, and the inlined script (the minified build without its trailing
`//# sourceMappingURL` line, whose map is not vendored) must match its pinned sha256, which the template repeats in
a `data-sha256` attribute so that `tests/test_dvc_plots_offline.py` can re-check it without a network.
To move to other versions: change `version` and both hashes here (take `dist.integrity` from
`https://registry.npmjs.org/<name>/<version>`), run the script, and check the page in a browser.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import re
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / ".dvc" / "plots_template.html"  # `.dvc/config`: plots.html_template = plots_template.html
REGISTRY = "https://registry.npmjs.org"
SOURCE_MAP_LINE = re.compile(r"\n//# sourceMappingURL=[^\n]*\n?\Z")
# What dvc-render's HTML.embed replaces in a template; a library's text must hold none of them.
PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}", "{scripts}")


@dataclass(frozen=True)
class Library:
    name: str  # npm package name
    version: str  # the version dvc-render's VegaRenderer.SCRIPTS loads from the CDN (same specs, same behaviour)
    member: str  # the minified UMD build inside the tarball
    integrity: str  # the registry's `dist.integrity` of the tarball (SRI: "sha512-<base64>")
    script_sha256: str  # sha256 of the inlined text (the member without its sourceMappingURL line), hex

    @property
    def tarball_url(self) -> str:
        return f"{REGISTRY}/{self.name}/-/{self.name}-{self.version}.tgz"

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


# In load order: vega-lite needs the global `vega`, vega-embed needs both.
LIBRARIES = (
    Library(
        "vega",
        "5.20.2",
        "package/build/vega.min.js",
        "sha512-qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw==",
        "575de88557ddaab0e2a3a55ff7e3685ef4b0d10b2c2194191caba7f080d595b1",
    ),
    Library(
        "vega-lite",
        "5.2.0",
        "package/build/vega-lite.min.js",
        "sha512-Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw==",
        "1f3780f0579a094c345ef2cefd8d8e0bf87a29c70e99e7d2c9b8a62973a1e35c",
    ),
    Library(
        "vega-embed",
        "6.18.2",
        "package/build/vega-embed.min.js",
        "sha512-wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg==",
        "350511128fdd864c0f4cd72922e9bb32e8f30ccf7992be1ef851660501b1449a",
    ),
)


@dataclass(frozen=True)
class Vendored:
    library: Library
    script: str  # the minified build, ready to inline
    license: str  # the package's LICENSE file


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sri_sha512(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


def unpack(library: Library, tarball: bytes) -> Vendored:
    """The library's inlinable script and licence from its npm tarball, after checking both pinned hashes."""
    got = sri_sha512(tarball)
    if got != library.integrity:
        raise ValueError(f"{library.tarball_url}: integrity {got}, expected the pinned {library.integrity}")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:

        def member_text(name: str) -> str:
            handle = archive.extractfile(name)
            if handle is None:
                raise ValueError(f"{library.label}: {name} is not a regular file in the tarball")
            return handle.read().decode("utf-8")

        script = SOURCE_MAP_LINE.sub("\n", member_text(library.member))
        licence = member_text("package/LICENSE")
    if sha256(script) != library.script_sha256:
        raise ValueError(f"{library.label}: script sha256 {sha256(script)}, expected {library.script_sha256}")
    return Vendored(library, script, licence)


def download(library: Library) -> Vendored:
    with urllib.request.urlopen(library.tarball_url, timeout=120) as response:  # a fixed https URL
        return unpack(library, response.read())


def _check_inlinable(item: Vendored) -> None:
    """Text that would end the inline <script> early, or that DVC would substitute into, cannot be inlined."""
    for bad in ("</script", "<!--", *PLACEHOLDERS):
        if bad in item.script.lower():
            raise ValueError(f"{item.library.label}: the script contains {bad!r}; it cannot be inlined as it is")
    for bad in ("--", *PLACEHOLDERS):
        if bad in item.license:
            raise ValueError(f"{item.library.label}: the licence contains {bad!r}; it cannot go in an HTML comment")


def render(items: list[Vendored]) -> str:
    """The template: dvc-render's default page, less `{scripts}`, plus the inlined libraries and their licences."""
    for item in items:
        _check_inlinable(item)
    scripts = "".join(
        f'    <script type="text/javascript" data-package="{item.library.label}" '
        f'data-sha256="{item.library.script_sha256}">{item.script}</script>\n'
        for item in items
    )
    licences = "".join(f"\n{item.library.label}\n\n{item.license.strip()}\n" for item in items)
    page = f"""<!DOCTYPE html>
<!-- Generated by tools/vendor_vega.py: do not edit. `dvc plots show` fills the plot_divs and refresh_tag
placeholders below; the libraries are inlined, so the page needs no network. -->
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC Plot</title>
{scripts}    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
<!-- Licences of the inlined libraries:
{licences}-->
</html>
"""
    counts = {placeholder: page.count(placeholder) for placeholder in PLACEHOLDERS}
    expected = {"{plot_divs}": 1, "{refresh_tag}": 1, "{scripts}": 0}
    if counts != expected:
        raise ValueError(f"template placeholders {counts}, expected {expected}")
    return page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed template, write nothing")
    parser.add_argument("--out", type=Path, default=TEMPLATE, help=f"where to write (default {TEMPLATE})")
    args = parser.parse_args(argv)
    page = render([download(library) for library in LIBRARIES])
    if args.check:
        same = args.out.is_file() and args.out.read_bytes() == page.encode("utf-8")
        print(f"{args.out}: {'up to date' if same else 'differs from a fresh build'}")
        return 0 if same else 1
    args.out.write_bytes(page.encode("utf-8"))
    print(f"wrote {args.out} ({len(page.encode('utf-8')) / 1e6:.2f} MB): {', '.join(x.label for x in LIBRARIES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
