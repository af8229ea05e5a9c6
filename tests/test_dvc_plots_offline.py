"""`dvc plots show` writes a page that works offline: the project's HTML template inlines vega, vega-lite and
vega-embed (built by tools/vendor_vega.py), instead of DVC's default page that loads them from a CDN."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import re
import shutil
import subprocess
import sys
import tarfile
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType

import pytest
from configobj import ConfigObj
from conftest import IN_CI, REPO

# A plot whose values are exact in binary and decimal, so they appear verbatim in the page's inline data.
LOSS_CSV = "step,loss\n1,0.875\n2,0.625\n3,0.4375\n"
DVC_YAML = "plots:\n  - plots/loss.csv:\n      x: step\n      y: loss\n"
EXTERNAL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)  # http://, https://, protocol-relative //


def vendor_vega() -> ModuleType:
    """tools/vendor_vega.py (a script, not a package), for its pins."""
    spec = importlib.util.spec_from_file_location("vendor_vega", REPO / "tools" / "vendor_vega.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class body runs
    spec.loader.exec_module(module)
    return module


def configured_template() -> Path:
    """The template `.dvc/config` names (DVC reads a relative `plots.html_template` from the .dvc folder)."""
    config = ConfigObj(str(REPO / ".dvc" / "config"))
    assert "html_template" in config.get("plots", {}), ".dvc/config sets no plots.html_template"
    return REPO / ".dvc" / config["plots"]["html_template"]


class Page(HTMLParser):
    """Every tag's URL-valued attributes, and the text of each inline script with its attributes."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._open: dict[str, str | None] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [(tag, name, value or "") for name, value in attrs if name in ("src", "href", "data")]
        if tag == "script":
            self._open = dict(attrs)
            self.scripts.append((self._open, ""))

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._open = None

    def external_refs(self) -> list[tuple[str, str, str]]:
        return [ref for ref in self.refs if EXTERNAL.match(ref[2])]


def test_the_url_check_catches_dvcs_default_cdn_scripts() -> None:
    """The check below is not vacuous: DVC's own page loads all three libraries from a CDN."""
    from dvc_render.vega import VegaRenderer

    refs = Page(VegaRenderer.SCRIPTS).external_refs()
    assert [(tag, attr) for tag, attr, _ in refs] == [("script", "src")] * 3, refs
    assert all("cdn." in url for _, _, url in refs)


def test_template_inlines_the_pinned_builds() -> None:
    """The committed template holds exactly the pinned scripts, in load order, and DVC's plot placeholder only."""
    vendor = vendor_vega()
    template = configured_template()
    assert template == vendor.TEMPLATE, f"{template} is not where tools/vendor_vega.py writes ({vendor.TEMPLATE})"
    html = template.read_text(encoding="utf-8")
    page = Page(html)
    assert page.external_refs() == []
    assert "cdn." not in html
    assert html.count("{plot_divs}") == 1 and "{scripts}" not in html  # no CDN tags inserted by dvc-render
    inlined = [(attrs.get("data-package"), attrs.get("data-sha256"), text) for attrs, text in page.scripts]
    assert [(name, digest) for name, digest, _ in inlined] == [
        (lib.label, lib.script_sha256) for lib in vendor.LIBRARIES
    ]
    for name, digest, text in inlined:
        assert hashlib.sha256(text.encode("utf-8")).hexdigest() == digest, f"{name}: inlined text != pinned sha256"
    assert len(html.encode("utf-8")) < 1_200_000, "only the minified builds belong in the template"


def test_unpack_checks_both_pinned_hashes() -> None:
    """A tarball that differs from its pin, or a build that differs from its pin, is refused."""
    vendor = vendor_vega()
    script = "var lib = 1;\n"

    def tarball(build: str) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            for name, text in [
                ("package/build/lib.min.js", build + "//# sourceMappingURL=lib.min.js.map\n"),
                ("package/LICENSE", "BSD\n"),
            ]:
                info = tarfile.TarInfo(name)
                info.size = len(text.encode())
                archive.addfile(info, io.BytesIO(text.encode()))
        return buffer.getvalue()

    good = tarball(script)
    lib = vendor.Library("lib", "1.0.0", "package/build/lib.min.js", vendor.sri_sha512(good), vendor.sha256(script))
    unpacked = vendor.unpack(lib, good)
    assert (unpacked.script, unpacked.license) == (script, "BSD\n")  # source map line dropped
    with pytest.raises(ValueError, match="integrity"):
        vendor.unpack(lib, tarball("var lib = 2;\n"))
    other = tarball("var lib = 2;\n")
    with pytest.raises(ValueError, match="script sha256"):
        vendor.unpack(vendor.Library("lib", "1.0.0", lib.member, vendor.sri_sha512(other), lib.script_sha256), other)
    with pytest.raises(ValueError, match="</script"):
        vendor.render([vendor.Vendored(lib, "s = '</script>';\n", "BSD\n")])


@pytest.fixture(scope="module")
def plots_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`dvc plots show` (twice: same page) in a tiny DVC project with one CSV plot and this project's template."""
    project = tmp_path_factory.mktemp("project")
    (project / "plots").mkdir(parents=True)
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=project, check=True)
    template = configured_template()
    shutil.copy2(REPO / ".dvc" / "config", project / ".dvc" / "config")
    (project / ".dvc" / template.relative_to(REPO / ".dvc")).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(template, project / ".dvc" / template.relative_to(REPO / ".dvc"))
    (project / "plots" / "loss.csv").write_text(LOSS_CSV)
    (project / "dvc.yaml").write_text(DVC_YAML)
    pages = []
    for _ in range(2):
        done = subprocess.run([dvc, "plots", "show"], cwd=project, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"dvc plots show failed: {done.stdout}\n{done.stderr}"
        pages.append((project / "dvc_plots" / "index.html").read_bytes())
    assert pages[0] == pages[1], "dvc plots show wrote different pages for the same plots"
    return project / "dvc_plots" / "index.html"


def test_dvc_plots_show_writes_a_self_contained_page(plots_page: Path) -> None:
    html = plots_page.read_text(encoding="utf-8")
    page = Page(html)
    assert page.external_refs() == [], "the page loads something over the network"
    assert "cdn." not in html
    assert [attrs.get("data-package") for attrs, _ in page.scripts[:3]] == [
        lib.label for lib in vendor_vega().LIBRARIES
    ]
    plot_scripts = [text for attrs, text in page.scripts if "vegaEmbed(" in text]
    assert len(plot_scripts) == 1, "one plot, one vegaEmbed call"
    values = re.search(r'"values":\s*(\[.*?\])', plot_scripts[0])
    assert values is not None, "the plot's data is not inline"
    assert re.findall(r'"loss":\s*"?([0-9.]+)', values.group(1)) == ["0.875", "0.625", "0.4375"]


@pytest.mark.slow  # headless Chromium
def test_the_page_draws_its_plot_with_no_network(plots_page: Path, tmp_path: Path) -> None:
    """Rendered with every host name unresolvable, vega-embed still draws the plot (a canvas inside .vega-embed)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        message = "chromium is not installed; `make browser` installs the Debian package"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--virtual-time-budget=10000",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--dump-dom",
    ]
    done = subprocess.run(
        [binary, *flags, plots_page.resolve().as_uri()], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"chromium exited with {done.returncode}: {done.stderr[-2000:]}"
    assert re.search(r'<div id="plots_loss_csv" class="vega-embed[^"]*">\s*<div class="chart-wrapper', done.stdout)
    assert re.search(r'<canvas[^>]*class="marks"', done.stdout), "vega drew nothing"
