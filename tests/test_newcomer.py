"""What a newcomer meets first: a run that has not finished is named as such by every loader, with
the command that finishes it (the README's and the tutorials' claims are checked in test_docs.py and
test_tutorials.py)."""
from __future__ import annotations

import pytest
import torch

import tinyvit
from tinyvit import data, predict
from tinyvit.checkpoint import CheckpointError


def test_an_unfinished_run_points_at_resume(tmp_path):
    """A run stopped before its first model.safetensors holds checkpoint.pt only: predict and
    load_pretrained on the folder say how to finish it, not "a directory without weights"."""
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": "tinyvit.finetune", "version": 1}, run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=f"has not finished .*--out {run} --resume"):
        tinyvit.load_pretrained(run)
    image = tmp_path / "x.png"
    data.Synthetic(3)[1][0].save(image)
    with pytest.raises(SystemExit, match=f"has not finished .*python -m tinyvit.finetune --out {run} --resume") as e:
        predict.main([str(image), "--model-dir", str(run)])
    assert "without weights" not in str(e.value) and "\n" not in str(e.value)
    (run / "checkpoint.pt").unlink()
    with pytest.raises(CheckpointError, match="a directory without weights"):  # not a run: as before
        tinyvit.load_pretrained(run)
