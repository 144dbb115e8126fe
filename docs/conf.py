# The documentation site: `make docs` runs `sphinx-build -c docs . docs/_build/html` (README.md, Layout).
#
# The source folder is the repository itself, so the pages are its own files (README.md,
# ARCHITECTURE.md, tutorials/, bench/README.md), their links resolve as they do on disk, and each
# tutorial runs in the real tutorials/ folder (05-07 reach bench/ and tests/ from there). MyST-NB reads
# the percent-format tutorials through jupytext (docs/_ext/tinyvit_docs.py, which also writes the study
# and API pages) and executes each in its own fresh kernel on every build; a tutorial that raises fails
# the build. Nothing is fetched at build or view time: MathJax comes from the sphinx-mathjax-offline
# package and is served from _static/, and there is no intersphinx.
import importlib.util
import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))

# The kernels inherit these: what tests/test_tutorials.py gives the scripts. One intra-op thread per
# kernel, since `-j 2` runs two kernels on the two cores; 05 and 06 set TRITON_INTERPRET themselves.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("TRITON_INTERPRET", None)

project = "tinyvit"
author = "the tinyvit authors"
root_doc = "docs/index"
extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.mathjax", "tinyvit_docs"]

# The pages. Tutorials and studies are globbed (here and in docs/index.md), so a new one needs no edit.
# Every other top-level entry (.venv, .git, runs, data, tinyvit, tests ...) is pruned from the walk.
PAGES = ("README.md", "ARCHITECTURE.md", "docs", "tutorials", "studies", "bench")
include_patterns = ["README.md", "ARCHITECTURE.md", "docs/*.md", "docs/_generated/**", "tutorials/README.md",
                    "tutorials/[0-9][0-9]_*.py", "bench/README.md"]
exclude_patterns = sorted(p.name for p in ROOT.iterdir() if p.name not in PAGES) + [
    "docs/_build", "docs/_ext", "docs/_root", "tutorials/out", "bench/results", "**/__pycache__"]

nb_custom_formats = {".py": "tinyvit_docs.read_tutorial"}
nb_execution_mode = "force"     # every build runs every tutorial: no cache to outlive a change in tinyvit
nb_execution_timeout = 300      # seconds per cell (a whole script gets as much in tests/test_tutorials.py)
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
default_role = "code"  # the docstrings' `name` means code

html_theme = "furo"
html_title = "tinyvit"
html_show_copyright = False
html_extra_path = ["_root"]  # index.html at the top of the site, pointing to docs/index.html
# MathJax 3 from the sphinx-mathjax-offline package (its static/mathjax/ folder, copied to _static/mathjax/).
html_static_path = [str(Path(importlib.util.find_spec("sphinx-mathjax-offline").origin).parent / "static")]
mathjax_path = "mathjax/tex-chtml.js"
