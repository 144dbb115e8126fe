"""The tutorials run, offline, as a reader would run them, and read in order.

Each `tutorials/<NN>_<name>.py` runs as `python tutorials/<NN>_<name>.py` from the repository root, in a
fresh process, with TINYVIT_TUTORIAL_OUT pointing into tmp_path; it must exit 0, save the plots it
promises there as real PNG files, leave nothing else behind (no temporary checkpoints, no files
outside that folder), and contain asserts of its own that make its printed claims checkable. Each
file must also be a jupytext percent-format notebook that opens with what it teaches and ends by
pointing to the next one, and tutorials/README.md must list them all in order.

The notebook form (a kernel in tutorials/, no `__file__`) runs in the documentation build, which
tests/test_docs_site.py builds or is handed: a tutorial that raises there fails it, and each tutorial's
page must show the plots below.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
FILES = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))

# The plots each tutorial must save (more may appear: 05 and 06 also plot GPU results when
# bench/results holds some).
PLOTS = {
    "01": ["01_patches.png"],
    "02": ["02_position_similarity.png"],
    "03": ["03_attention_cost.png"],
    "04": ["04_parameters.png"],
    "05": ["05_variance_two_pass.png"],
    "06": ["06_tiles.png"],
    "07": ["07_converter_check.png"],
    "08": ["08_curves.png"],
    "09": ["09_vit_vs_resnet.png"],
    "10": ["10_attention_maps.png"],
    "11": ["11_data_scaling.png"],
    "12": ["12_distillation.png"],
    "13": ["13_token_learner.png"],
    "14": ["14_mae.png"],
    "15": ["15_locality.png"],
    "16": ["16_fdvit.png"],
    "17": ["17_hf_trainer.png"],
    "18": ["18_fractals.png"],
    "19": ["19_pseudo_labels.png"],
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIMEOUT_S = 300  # most take 5-20 s on 2 idle cores, 18 and 19 (they train) ~70 and ~100-145 s; the margin is for a loaded machine


def number(path: Path) -> str:
    return path.name[:2]


def test_tutorials_numbered_in_order():
    numbers = [int(number(f)) for f in FILES]
    assert numbers[:10] == list(range(1, 11)) and numbers == sorted(set(numbers)), [f.name for f in FILES]


def test_readme_lists_them_in_order():
    readme = (TUTORIALS / "README.md").read_text()
    listed = re.findall(r"\b(\d\d_\w+\.py)\b", readme)
    assert list(dict.fromkeys(listed)) == [f.name for f in FILES]
    assert "jupytext" in readme


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_reads_as_a_percent_notebook(path):
    import jupytext

    notebook = jupytext.read(path, fmt="py:percent")
    cells = notebook.cells
    kinds = {c.cell_type for c in cells}
    assert kinds == {"markdown", "code"}, f"{path.name}: cells of kinds {kinds}"
    first, last = cells[0], cells[-1]
    assert first.cell_type == "markdown" and first.source.startswith(f"# {int(number(path))}. "), (
        f"{path.name}: should open with a markdown title '# {int(number(path))}. ...', got {first.source[:60]!r}"
    )
    assert "What you'll learn" in first.source, f"{path.name}: the opening cell should say what you'll learn"
    assert last.cell_type == "markdown", f"{path.name}: should end with a markdown cell"
    index = FILES.index(path)
    if index + 1 < len(FILES):
        assert f"({FILES[index + 1].name})" in last.source, f"{path.name}: the last cell should link to {FILES[index + 1].name}"
    # Real tinyvit code, not a copy of it.
    assert re.search(r"^(import tinyvit|from tinyvit[.\w]* import)", path.read_text(), re.M), path.name


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_file_has_a_fallback_for_notebooks(path):
    """A notebook kernel defines no `__file__` (tutorial 17 once raised NameError there): every use of it
    sits behind the check the tutorials share."""
    for line in path.read_text().splitlines():
        if "__file__" in line and not line.lstrip().startswith("#"):
            assert '"__file__" in globals()' in line, f"{path.name}: `__file__` without the notebook fallback: {line.strip()}"


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_runs_offline_and_saves_its_plots(path, tmp_path):
    out = tmp_path / "out"
    repo_out = TUTORIALS / "out"
    before = sorted(repo_out.rglob("*")) if repo_out.exists() else None
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # 05 and 06 must set it themselves
    # One intra-op thread: the tutorials' models are tiny, and on a busy 2-core machine two threads make
    # every op wait for the slower one (tutorial 10 measured 184 s with two threads, 25 s with one).
    env.update(TINYVIT_TUTORIAL_OUT=str(out), HF_HUB_OFFLINE="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(path.relative_to(ROOT))], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, (
        f"{path.name} exited {proc.returncode}\n--- stdout (tail) ---\n{proc.stdout[-3000:]}\n"
        f"--- stderr (tail) ---\n{proc.stderr[-3000:]}"
    )
    for name in PLOTS[number(path)]:
        png = out / name
        assert png.is_file(), f"{path.name} did not save {name}; it saved {sorted(p.name for p in out.iterdir())}"
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000, f"{png} is not a real plot"
    leftovers = [p.name for p in out.iterdir() if not (p.is_file() and p.name.startswith(number(path) + "_"))]
    assert not leftovers, f"{path.name} left these in its output folder: {leftovers}"
    after = sorted(repo_out.rglob("*")) if repo_out.exists() else None
    assert after == before, f"{path.name} wrote into {repo_out} although TINYVIT_TUTORIAL_OUT was set"
