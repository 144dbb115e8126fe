"""The documentation site (`make docs`), checked as a reader sees it: served on 127.0.0.1 and opened in
headless Chromium (Debian's package, /usr/bin/chromium, driven by Playwright).

The site under test is TINYVIT_DOCS_SITE when set (.ci/run sets it to the `make docs` it just ran), else
one built here, once per session, by the same command into a temporary folder (about 3 minutes: every
tutorial runs as a notebook). Building it is the notebook-form test of the tutorials: each runs in its
own kernel in tutorials/, with no `__file__`, and one that raises fails the build
(test_a_tutorial_that_raises_fails_the_build shows that on a small site).

In the browser, on every page: each image loaded (natural width above 0), no request failed or left
127.0.0.1, no console error, no traceback in any output, and every formula typeset by the local MathJax.
From the files: every internal link and anchor resolves; each tutorial's page shows at least the figures
tests/test_tutorials.py requires of it, and byte for byte the figures it saved during the build; each study
has a page with its plots and its results table (as many rows as results.md); every name in
`tinyvit.__all__` is documented. One screenshot per page type is kept in build/test-artifacts/docs-site/.

Without Chromium (or Playwright) the browser tests skip, except under CI (CI=true), where they fail:
.ci/run installs Chromium.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest

from test_tutorials import FILES, PLOTS

# The small site's tutorial and a link "one folder up", written so: the repository's reference scan
# (tests/test_docs.py) must not read the small site's relative links as files of this repository.
UP, SMALL = "../", "01_small"
ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "build" / "test-artifacts" / "docs-site"
# What `make docs` runs, with the output folders as arguments.
BUILD = [sys.executable, "-m", "sphinx", "-b", "html", "-j", "2", "-W", "--keep-going", "-T", "-c", "docs", "-q"]
BUILD_TIMEOUT_S = 1200
# As the machine notes have it: without these, Chromium's own connections to the outside are refused
# many at a time on a machine with no network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def build(source: Path, out: Path, **env_vars) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TINYVIT_DOCS_SITE"} | env_vars
    return subprocess.run([*BUILD, "-d", str(out / "doctrees"), str(source), str(out / "html")], cwd=source, env=env,
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    if os.environ.get("TINYVIT_DOCS_SITE"):
        html = Path(os.environ["TINYVIT_DOCS_SITE"]).resolve()
        assert (html / "docs" / "index.html").is_file(), f"TINYVIT_DOCS_SITE={html}: no built site there (make docs)"
        return html
    out = tmp_path_factory.mktemp("site")
    proc = build(ROOT, out)
    assert proc.returncode == 0, f"the docs build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return out / "html"


class Page(HTMLParser):
    """The ids a page defines and the URLs it refers to (links, images, scripts, stylesheets)."""

    def __init__(self):
        super().__init__()
        self.ids, self.urls = set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.ids.update(attrs[k] for k in ("id", "name") if attrs.get(k))
        for key in ("href", "src"):
            if attrs.get(key) is not None:
                self.urls.append((tag, attrs[key]))


@functools.lru_cache(maxsize=None)
def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def pages(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("*.html") if not p.relative_to(site).parts[0].startswith("_"))


def tutorial_pages(site: Path) -> dict[str, Path]:
    return {f.name[:2]: site / "tutorials" / f"{f.stem}.html" for f in FILES}


def study_folders() -> list[Path]:
    return sorted(p for p in (ROOT / "studies").iterdir() if p.is_dir())


def markdown_table(path: Path) -> tuple[list[str], int]:
    """The header cells and the number of body rows of the first Markdown table in a file."""
    rows = [line for line in path.read_text().splitlines() if line.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    return header, len(rows) - 2


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------------
# From the files


def test_every_internal_link_and_anchor_resolves(site):
    broken, external_assets = [], []
    for page in pages(site):
        for tag, url in parse(page).urls:
            parts = urlsplit(url)
            if parts.scheme or url.startswith("//"):
                if tag in ("img", "script", "link") and parts.scheme in ("http", "https", ""):
                    external_assets.append(f"{page.relative_to(site)}: {url}")
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            where = f"{page.relative_to(site)}: {url}"
            if not target.is_file() or site not in target.parents:
                broken.append(where)
            elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in parse(target).ids:
                broken.append(where + " (no such anchor)")
    assert not broken, "internal links that go nowhere:\n" + "\n".join(broken)
    assert not external_assets, "the site loads these from outside (it must work offline):\n" + "\n".join(external_assets)


def test_every_tutorial_shows_the_figures_it_saved(site):
    saved = json.loads((site / "_static" / "tutorial_figures.json").read_text())
    for number, page in tutorial_pages(site).items():
        assert page.is_file(), f"no page for tutorial {number}: {page.relative_to(site)}"
        docname = str(page.relative_to(site).with_suffix(""))
        names = {f["file"] for f in saved.get(docname, [])}
        missing = set(PLOTS.get(number, [])) - names
        assert not missing, f"{docname} saved no {sorted(missing)} during the build (it saved {sorted(names)})"
        shown = {sha256((page.parent / unquote(src)).read_bytes())
                 for tag, src in parse(page).urls if tag == "img" and not urlsplit(src).scheme}
        for figure in saved[docname]:
            assert figure["sha256"] in shown, f"{page.relative_to(site)} does not show {figure['file']}, which it saved"


def test_every_study_has_a_page_with_its_plots_and_table(site):
    folders = study_folders()
    assert folders, "no studies/*/ folder"
    for folder in folders:
        page = site / "docs" / "_generated" / "studies" / f"{folder.name}.html"
        assert page.is_file(), f"no page for studies/{folder.name}"
        shown = {sha256((page.parent / unquote(src)).read_bytes()) for tag, src in parse(page).urls if tag == "img"}
        for png in folder.glob("*.png"):
            assert sha256(png.read_bytes()) in shown, f"{page.relative_to(site)} does not show {png.name}"
        html = page.read_text()
        header, n_rows = markdown_table(folder / "results.md")
        tables = re.findall(r"<table.*?</table>", html, re.S)
        matching = [t for t in tables if [re.sub(r"<[^>]+>", "", h).strip() for h in re.findall(r"<th.*?</th>", t, re.S)]
                    == header]
        assert matching, f"{page.relative_to(site)} has no table with the header of results.md: {header}"
        assert len(re.findall(r"<tr", matching[0])) - 1 == n_rows, f"{page.relative_to(site)}: not {n_rows} rows"


def test_every_public_name_is_documented(site):
    import tinyvit

    ids = set().union(*(parse(p).ids for p in (site / "docs" / "_generated").rglob("*.html")))
    missing = [name for name in tinyvit.__all__ if f"tinyvit.{name}" not in ids]
    assert not missing, f"the API reference has no entry for {missing}"


def test_the_readme_and_the_architecture_are_pages(site):
    for name in ("README", "ARCHITECTURE"):
        text = (site / f"{name}.html").read_text()
        first = (ROOT / f"{name}.md").read_text().splitlines()[0].lstrip("# ").strip()
        assert f">{first}<" in text or first in re.sub(r"<[^>]+>", "", text), f"{name}.html does not show {name}.md"


# ---------------------------------------------------------------------------------------------------
# In the browser


# Module-scoped: Playwright's driver reads its commands on a pipe and exits at the pipe's end, so a
# process forked while it runs (a DataLoader worker of a later test) must not hold that pipe at the
# session's end: the browser and its driver end with this file.
@pytest.fixture(scope="module")
def browser():
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if in_ci:
            pytest.fail("playwright is not installed (the docs extra): CI must check the site in a browser")
        pytest.skip("playwright is not installed (pip install -e '.[docs]')")
    if not CHROMIUM.exists():
        if in_ci:
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(Quiet, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


SCREENSHOTS = {  # page type -> the page that stands for it
    "index": "docs/index.html",
    "readme": "README.html",
    "tutorial": None,  # the first tutorial
    "study": None,     # the first study
    "api": "docs/_generated/api.html",
}
WAIT_FOR_MATHJAX = """async () => {
  if (!document.querySelector('.math')) return 0;
  for (let i = 0; i < 200 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); i++)
    await new Promise(r => setTimeout(r, 50));
  if (!(window.MathJax && MathJax.startup)) return -1;  // MathJax never loaded
  await MathJax.startup.promise;
  return document.querySelectorAll('mjx-container').length;
}"""
IMAGES = """() => Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"""


def test_every_page_in_the_browser(site, server, browser):
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    SCREENSHOTS["tutorial"] = str(tutorial_pages(site)[FILES[0].name[:2]].relative_to(site))
    SCREENSHOTS["study"] = f"docs/_generated/studies/{study_folders()[0].name}.html"
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    outside, failed, errors = [], [], []
    # Anything not on this server is refused and recorded: the site must need nothing else.
    context.route(re.compile(r"^(?!" + re.escape(server) + ").*"),
                  lambda route: (outside.append(route.request.url), route.abort()))
    page = context.new_page()
    page.on("requestfailed", lambda r: failed.append(f"{r.url}: {r.failure}"))
    page.on("response", lambda r: failed.append(f"{r.url}: HTTP {r.status}") if r.status >= 400 else None)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server)  # the top of the site points to the landing page
    page.wait_for_url(urljoin(server, "docs/index.html"))
    typeset = {}
    for path in pages(site):
        if path == site / "index.html":
            continue
        rel = str(path.relative_to(site))
        outside.clear(), failed.clear(), errors.clear()
        response = page.goto(urljoin(server, rel), wait_until="load")
        assert response.ok, f"{rel}: HTTP {response.status}"
        n_math = page.evaluate(WAIT_FOR_MATHJAX)
        formulas = page.locator(".math").count()
        if formulas:
            typeset[rel] = n_math
            assert n_math >= formulas and page.locator("mjx-merror").count() == 0, (
                f"{rel}: {formulas} formulas, {n_math} typeset by MathJax (-1: MathJax did not load)")
        assert not page.evaluate(IMAGES), f"{rel}: images that did not load: {page.evaluate(IMAGES)}"
        text = page.inner_text("body")
        assert "Traceback (most recent call last)" not in text and page.locator(".output.traceback").count() == 0, (
            f"{rel}: an output holds a traceback")
        assert not outside, f"{rel}: requests for outside the site: {outside}"
        assert not failed, f"{rel}: failed requests: {failed}"
        assert not errors, f"{rel}: console errors: {errors}"
        for kind, shot in SCREENSHOTS.items():
            if shot == rel:
                page.screenshot(path=str(ARTIFACTS / f"{kind}.png"), full_page=True)
    context.close()
    # Not vacuous: the tutorials that write display maths ($$) had it typeset.
    with_maths = {str(tutorial_pages(site)[f.name[:2]].relative_to(site)) for f in FILES if "$$" in f.read_text()}
    assert with_maths and with_maths <= set(typeset), f"maths not typeset on {sorted(with_maths - set(typeset))}"
    assert sorted(p.name for p in ARTIFACTS.iterdir()) == sorted(f"{k}.png" for k in SCREENSHOTS)


# ---------------------------------------------------------------------------------------------------
# The build itself


def test_a_tutorial_that_raises_fails_the_build(tmp_path):
    """A small site with the real configuration, one tutorial and one study: it builds, the tutorial's output
    is on its page, the links of the study's README (included into its page) resolve from its folder.
    Made to raise as tutorial 17 once did in a notebook (`__file__` is not defined in a kernel), the build
    fails and names the tutorial and the error."""
    source = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", source / "docs", ignore=shutil.ignore_patterns("_build", "_generated", "__pycache__"))
    for name in ("README.md", "ARCHITECTURE.md", "bench/README.md", "tutorials/README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(f"# {name}\n")
    (source / "studies" / "small").mkdir(parents=True)
    (source / "studies" / "small" / "results.md").write_text("| a |\n|---|\n| 1 |\n")
    (source / "studies" / "small" / "results.csv").write_text("a\n1\n")
    (source / "studies" / "small" / "README.md").write_text(  # included into its page: links from its folder
        f"# Small study\n\n[The CSV](results.csv), [tutorial 1]({UP * 2}tutorials/{SMALL}.py).\n")
    # A stand-in for the package, for the API page: the small site needs no torch.
    (source / "tinyvit").mkdir()
    (source / "tinyvit" / "__init__.py").write_text('__all__ = ["f"]\n\n\ndef f():\n    """A function."""\n')
    tutorial = source / "tutorials" / "01_small.py"
    body = "# %% [markdown]\n# # 1. Small\n\n# %%\nfrom pathlib import Path\n{}print(6 * 7)\n\n# %% [markdown]\n# The end.\n"
    tutorial.write_text(body.format(""))
    ok = build(source, tmp_path / "ok", PYTHONPATH=str(source))
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-3000:]
    assert ">42\n</pre>" in (tmp_path / "ok" / "html" / "tutorials" / "01_small.html").read_text()
    study = (tmp_path / "ok" / "html" / "docs" / "_generated" / "studies" / "small.html").read_text()
    assert f'href="{UP * 3}tutorials/{SMALL}.html"' in study and re.search(r'href="[./]*_downloads/\w+/results.csv"', study)
    tutorial.write_text(body.format("HERE = Path(__file__).parent\n"))
    failing = build(source, tmp_path / "failing", PYTHONPATH=str(source))
    log = failing.stdout + failing.stderr
    assert failing.returncode != 0, "the build passed although a tutorial raised"
    assert "01_small.py" in log and "NameError" in log and "__file__" in log, log[-3000:]
