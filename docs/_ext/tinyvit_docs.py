"""What the site needs beyond Sphinx and MyST-NB: the tutorials read as notebooks that show the
figures they save, one generated page per study, the API page from `tinyvit.__all__`, and the
links the repository's Markdown makes to study folders.

Tutorials and studies are found by globbing (`tutorials/NN_*.py`, `studies/*/`), so a new one
appears on the next build with no edit here or in conf.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import jupytext
from sphinx import addnodes

GENERATED = "docs/_generated"  # under the source folder (the repository); written by every build, git-ignored
FIGURES_JSON = "_static/tutorial_figures.json"

# The tutorials build their figures with `matplotlib.figure.Figure` and only `savefig` them, which no
# notebook front end displays. This cell, run first and hidden from the page, makes each figure saved
# into the tutorial's output folder also show under the cell that saved it: the same bytes, read
# back from the file. The tutorials themselves stay as they are.
SHOW_SAVED_FIGURES = '''\
def _show_saved_figures():
    import os
    from pathlib import Path

    from IPython.display import Image, display
    from matplotlib.figure import Figure

    out = Path(os.environ["TINYVIT_TUTORIAL_OUT"]).resolve()
    savefig = Figure.savefig

    def savefig_and_show(self, fname, *args, **kwargs):
        savefig(self, fname, *args, **kwargs)
        if isinstance(fname, (str, os.PathLike)) and Path(fname).resolve().parent == out:
            display(Image(filename=str(fname)))

    Figure.savefig = savefig_and_show


_show_saved_figures()
del _show_saved_figures'''


def read_tutorial(text: str):
    """nb_custom_formats reader: a percent-format tutorial as a notebook, with the figure cell first."""
    notebook = jupytext.reads(text, fmt="py:percent")
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = jupytext.reads("# %%\n" + SHOW_SAVED_FIGURES, fmt="py:percent").cells[0]
    cell.metadata["tags"] = ["remove-cell"]
    notebook.cells.insert(0, cell)
    return notebook


def tutorial_out(app) -> Path:
    return Path(app.doctreedir) / "tutorial_out"


def study_page(folder: Path, page: Path) -> str:
    """A study's page: its README when it has one (else a title), every plot, and its results table."""
    name, up = folder.name, os.path.relpath(folder, page.parent)
    lines = []
    if (folder / "README.md").is_file():
        lines += [f"```{{include}} {up}/README.md", ":relative-images:", "```", ""]  # links: study_links
    else:
        lines += [f"# Study: {name}", "",
                  f"The committed results of `studies/{name}/`, as the study wrote them (see the README's Studies section).", ""]
    for png in sorted(folder.glob("*.png")):
        lines += [f"## Plot: `{png.name}`", "", f"![{name}: {png.name}]({up}/{png.name})", ""]
    if (folder / "results.md").is_file():
        lines += ["## Table: `results.md`", "", f"```{{include}} {up}/results.md", "```", ""]
    for csv in sorted(folder.glob("*.csv")) + sorted(folder.glob("*.json")):
        lines += [f"- {{download}}`{csv.name} <{up}/{csv.name}>`"]
    return "\n".join(lines) + "\n"


def api_page() -> str:
    """One section per name in `tinyvit.__all__`, from its docstring (a plain dict such as PRESETS has none
    of its own: it gets its module's docstring and its keys)."""
    import inspect

    import tinyvit

    lines = ["# API reference", "", "Everything `tinyvit` exports (`tinyvit.__all__`), from the docstrings.", ""]
    for name in tinyvit.__all__:
        obj = getattr(tinyvit, name)
        lines += [f"## `{name}`", "", "```{eval-rst}"]
        if inspect.isclass(obj):
            lines += [f".. autoclass:: tinyvit.{name}"]
        elif callable(obj):
            lines += [f".. autofunction:: tinyvit.{name}"]
        else:
            module = next(m for key, m in sorted(sys.modules.items()) if key.startswith("tinyvit.")
                          and getattr(m, name, None) is obj and re.search(rf"^{name}\s*[:=]", inspect.getsource(m), re.M))
            lines += [f".. py:data:: tinyvit.{name}", f"   :type: {type(obj).__name__}", "",
                      *(f"   {line}" for line in inspect.getdoc(module).splitlines()), "",
                      f"   Its {len(obj)} keys: " + ", ".join(f"``{key}``" for key in obj) + "."]
        lines += ["```", ""]
    return "\n".join(lines)


def write_generated_pages(app) -> None:
    """The study pages and the API page, rewritten on every build, and the tutorials' output folder."""
    root = Path(app.srcdir)
    generated = root / GENERATED
    shutil.rmtree(generated, ignore_errors=True)
    (generated / "studies").mkdir(parents=True)
    for folder in sorted(p for p in (root / "studies").glob("*") if p.is_dir()):
        page = generated / "studies" / f"{folder.name}.md"
        page.write_text(study_page(folder, page))
    (generated / "api.md").write_text(api_page())
    out = tutorial_out(app)
    shutil.rmtree(out, ignore_errors=True)  # the build's own folder: only this build's figures
    out.mkdir(parents=True)
    os.environ["TINYVIT_TUTORIAL_OUT"] = str(out)  # every kernel inherits it


def study_links(app, doctree) -> None:
    """Links MyST cannot resolve here: README.md links a study by its folder (`studies/x`) or its README,
    neither of them a page, and a study's README, included into its page, links relative to its own
    folder. Point the first at the study's page, the others at what they name."""
    root, env = Path(app.srcdir).resolve(), app.env
    page = Path(env.doc2path(env.docname)).resolve()
    for node in list(doctree.findall(lambda n: isinstance(n, (addnodes.pending_xref, addnodes.download_reference)))):
        if node.get("reftype") != "myst":
            continue
        source = Path(node.source).resolve() if node.source else page
        if node.get("refdomain") == "doc":  # a Markdown file, named as a document
            target = root / node["reftarget"]
        else:
            target = (source.parent / node["reftarget"].split("#")[0]).resolve()
        folder = target.parent if target.name in ("README", "README.md") else target
        study = f"{GENERATED}/studies/{folder.name}"
        xref = dict(refdomain="doc", reftype="myst", reftargetid=None, refdoc=env.docname,
                    refexplicit=node.get("refexplicit", True))
        if folder.parent == root / "studies" and study in env.found_docs:
            node.replace_self(addnodes.pending_xref("", *node.children, reftarget=study, **xref))
        elif source != page and target.is_file() and root in target.parents:  # from an included README
            docname = env.path2doc(str(target))
            node.replace_self(addnodes.pending_xref("", *node.children, reftarget=docname, **xref) if docname in env.found_docs
                              else addnodes.download_reference("", *node.children, reftarget="/" + str(target.relative_to(root)),
                                                               refdoc=env.docname, reftype="myst", refexplicit=True))


def is_tutorial(docname: str) -> bool:
    return docname.startswith("tutorials/") and docname[10:12].isdigit()


def balance_tutorials(app, env, docnames: list) -> None:
    """`-j 2` reads contiguous chunks of the sorted names (sphinx.util.parallel.make_chunks), which put
    most tutorials in one chunk and left one core idle; deal them alternately into the first two chunks."""
    if app.parallel < 2:
        return
    from sphinx.util.parallel import make_chunks

    size = len(make_chunks(docnames, app.parallel)[0])
    tutorials = [d for d in docnames if is_tutorial(d)]
    others = [d for d in docnames if not is_tutorial(d)]
    order = []
    for half in (tutorials[0::2], tutorials[1::2]):
        fill, others = others[:max(0, size - len(half))], others[max(0, size - len(half)):]
        order += half + fill
    docnames[:] = order + others


def record_figures(app, exception) -> None:
    """Which PNG each tutorial saved, with its SHA-256, for tests/test_docs_site.py to find on the page."""
    if exception is not None or app.builder.format != "html":
        return
    tutorials = {Path(d).name[:2]: d for d in app.env.found_docs if is_tutorial(d)}
    figures = {doc: [] for doc in tutorials.values()}
    for png in sorted(tutorial_out(app).glob("*.png")):
        if png.name[:2] in tutorials:
            figures[tutorials[png.name[:2]]].append(
                {"file": png.name, "sha256": hashlib.sha256(png.read_bytes()).hexdigest()})
    path = Path(app.outdir) / FIGURES_JSON
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=1))


def setup(app):
    app.connect("builder-inited", write_generated_pages)
    app.connect("env-before-read-docs", balance_tutorials)
    app.connect("doctree-read", study_links, priority=100)
    app.connect("build-finished", record_figures)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
