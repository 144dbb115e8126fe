"""The docs stand on their own: every link and file reference in the Markdown files, the tutorials,
the Makefile and the Python sources (docstrings, comments, help texts) resolves inside the repository.

What counts as a reference:
- a Markdown link `[text](target)` that is not a URL or an anchor: the target, relative to the file;
- any `NAME.md`: a file of that name beside the referring file, at the top, or at the given path;
- a path into one of the repository's folders (`tinyvit/x.py`, `tests/...`, `bench/...`, ...) that names
  a file (a glob, a placeholder like <name>, or a generated output folder is not a reference);
- an absolute path on some machine (`/work/...`, `/home/...`, `/root/...`) or a sibling folder `../x`
  outside the repository: never valid, the reader has no such file.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("tinyvit", "tests", "bench", "tutorials", "kernels", "studies", ".ci")
# Written by running things, not committed: the tutorials' and benchmarks' outputs, notebooks made by
# jupytext, a study's tables (results.md) and an export's README (out/README.md).
GENERATED = ("tutorials/out/", "bench/results/", "out/")
GENERATED_NAMES = ("results.md",)
GENERATED_SUFFIXES = (".ipynb",)

MD_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
MD_NAME = re.compile(r"(?<![\w/.-])((?:\.\./|\./)?(?:[\w.-]+/)*[\w.-]+\.md)\b")
REPO_PATH = re.compile(r"(?<![\w/.-])((?:%s)/(?:[\w.-]+/)*[\w-]+\.[A-Za-z]\w*)" % "|".join(re.escape(f) for f in FOLDERS))
MACHINE_PATH = re.compile(r"(?<![\w.])(/(?:work|home|root|Users|mnt)/[\w./-]+|\.\./[\w-]+/[\w./-]*)")


def documents() -> list[Path]:
    files = [p for p in ROOT.glob("*.md")] + [ROOT / "Makefile"]
    for folder in FOLDERS:
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".md", ".py") and p.is_file()]
    return sorted(p for p in files if "__pycache__" not in p.parts and p.name != "test_docs.py")


def resolves(ref: str, doc: Path) -> bool:
    ref = ref.split("#")[0].rstrip(".,:;)")
    if not ref:
        return True
    for base in (doc.parent, ROOT):
        target = (base / ref).resolve()
        if target.exists() and (target == ROOT or ROOT in target.parents):
            return True
    return False


def broken_references(doc: Path) -> list[str]:
    text = doc.read_text(encoding="utf-8")
    found = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        refs = set()
        # Links in Markdown, and in a .py file's comments (the tutorials' text cells), not in code
        links = MD_LINK.finditer(line) if doc.suffix == ".md" or line.lstrip().startswith("#") else ()
        for m in links:
            target = m.group(1)
            if not re.match(r"^(https?:|mailto:|#)", target):
                refs.add(target)
        refs.update(MD_NAME.findall(line))
        refs.update(r for r in REPO_PATH.findall(line) if not r.startswith(GENERATED))
        for ref in sorted(refs):
            if any(c in ref for c in "*<>{}$") or ref.startswith(("http", "www.")):
                continue
            if ref.startswith(GENERATED) or Path(ref).name in GENERATED_NAMES or ref.endswith(GENERATED_SUFFIXES):
                continue
            if not resolves(ref, doc):
                found.append(f"{doc.relative_to(ROOT)}:{line_no}: {ref}")
        for m in MACHINE_PATH.finditer(line):
            found.append(f"{doc.relative_to(ROOT)}:{line_no}: {m.group(1).rstrip('.,:;')} (a path outside the repository)")
    return found


def test_the_scan_finds_what_it_should(tmp_path, monkeypatch):
    """The checker itself: a broken link, a missing .md, a missing source file, a machine path."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "tinyvit").mkdir()
    (tmp_path / "tinyvit" / "real.py").write_text("")
    (tmp_path / "README.md").write_text("")
    doc = tmp_path / "tinyvit" / "doc.py"
    doc.write_text('"""See README.md, tinyvit/real.py and [ok](../README.md) and [web](https://x.org/a.md).\n'
                   "Also USERS.md, [gone](missing.md), tinyvit/gone.py and /work/shared/x.json.\n"
                   'tests/test_*.py and runs/<name>/model.safetensors are no references, nor out/README.md."""\n'
                   "x = [t for t in y](z)  # code, no link\n")
    assert broken_references(doc) == [
        "tinyvit/doc.py:2: USERS.md", "tinyvit/doc.py:2: missing.md", "tinyvit/doc.py:2: tinyvit/gone.py",
        "tinyvit/doc.py:2: /work/shared/x.json (a path outside the repository)",
    ]


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_reference_resolves_inside_the_repository(doc):
    broken = broken_references(doc)
    assert not broken, "references to files the repository does not have:\n" + "\n".join(broken)
