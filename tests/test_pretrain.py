"""`python -m tinyvit.pretrain` and `python -m tinyvit.finetune` are one training stack: the same
flags are checked the same way, a resume follows the same rules, and the study reads both kinds of
run the same way (issue 33's six inconsistencies, each of which once held)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from tinyvit import pretrain, rundir, study

ARCH = "patch_size=4,dim=32,depth=2,num_heads=4,mlp_dim=64"
TINY = ["--method", "mae", "--model", "vit_tiny_patch16_224", "--dataset", "digits", "--image-size", "16",
        "--override", ARCH, "--batch-size", "32", "--limit-train", "64", "--decoder-dim", "16",
        "--decoder-depth", "1", "--decoder-heads", "2", "--num-workers", "0", "--no-progress"]


def rerecord(path) -> None:
    """Record `path`'s new bytes in its run's manifest, as if the run had written them."""
    manifest = path.parent / rundir.MANIFEST
    m = json.loads(manifest.read_text())
    m["files"][path.name] = {"sha256": rundir.sha256_file(path), "bytes": path.stat().st_size}
    manifest.write_text(json.dumps(m))


def test_resume_pins_the_output_folder(tmp_path, monkeypatch):
    """A run moved to the default folder and resumed there records the folder it is in, not the one
    its checkpoint names (finetune's rule: the folder this command opened and locked)."""
    monkeypatch.chdir(tmp_path)
    assert pretrain.main(TINY + ["--epochs", "1", "--out", "elsewhere"]) == 0
    default = pretrain.parse_args(TINY)[0].out_dir()
    default.parent.mkdir(parents=True)
    shutil.move("elsewhere", default)
    assert pretrain.main(["--resume", "--model", "vit_tiny_patch16_224", "--dataset", "digits", "--epochs", "2",
                          "--no-progress"]) == 0
    assert json.loads((default / "summary.json").read_text())["config"]["out"] == str(default)


@pytest.mark.parametrize("flag", ["--num-workers", "--weight-decay"])
def test_flags_are_checked_as_finetune_checks_them(flag, capsys):
    with pytest.raises(SystemExit):
        pretrain.parse_args([flag, "-1"])
    assert f"{flag}: '-1': expected 0 or more" in capsys.readouterr().err


def test_a_warmup_longer_than_the_run_is_refused(tmp_path):
    with pytest.raises(SystemExit, match=r"--warmup-epochs 2 covers the whole run of 1 epochs"):
        pretrain.main(TINY + ["--epochs", "1", "--warmup-epochs", "2", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_resume_checks_the_saved_config_against_the_weights(tmp_path):
    out = tmp_path / "run"
    assert pretrain.main(TINY + ["--epochs", "1", "--out", str(out)]) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    for key in ("encoder_config", "model_config"):  # the old format's name, and the one stack's
        if key in state:
            state[key]["depth"] = 3
    torch.save(state, out / "checkpoint.pt")
    rerecord(out / "checkpoint.pt")
    with pytest.raises(SystemExit, match="does not describe these weights"):
        pretrain.main(["--out", str(out), "--resume", "--epochs", "2", "--no-progress"])


MAE_VIT = f"mae=vit_tiny_patch16_224 --image-size 16 --override {ARCH},pool=mean --layer-decay 0.75"
STUDY = ["--models", MAE_VIT, "--train-sizes", "20", "--seeds", "0", "--steps", "1", "--", "--dataset", "digits",
         "--recipe", "scratch", "--mixup", "0", "--cutmix", "0", "--batch-size", "32", "--num-workers", "0",
         "--limit-val", "32"]
PRE = "mae=--epochs 1 --batch-size 32 --limit-train 64 --decoder-dim 16 --decoder-depth 1 --decoder-heads 2"


def test_the_study_opens_pretraining_logs_without_following_links(tmp_path):
    out, target = tmp_path / "s", tmp_path / "outside.txt"
    target.write_text("not the study's\n")
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "pretrain-mae-seed0.log").symlink_to(target)
    with pytest.raises(SystemExit, match="pretrain-mae-seed0.log: not a regular file"):
        study.main(["--out", str(out), "--pretrain", PRE, *STUDY])
    assert target.read_text() == "not the study's\n"


def test_the_study_checks_pretraining_runs_as_it_checks_finetuning_runs(tmp_path):
    out = tmp_path / "s"
    assert study.main(["--out", str(out), "--pretrain", PRE, *STUDY]) == 0
    # a pretraining run made with other flags is not reported under this plan
    with pytest.raises(SystemExit, match="was made with --decoder-dim 16; this study plans 8"):
        study.main(["--out", str(out), "--pretrain", PRE.replace("--decoder-dim 16", "--decoder-dim 8"), *STUDY])
    # its summary.json is read only as the run wrote it
    summary = out / "pretrain-mae-seed0" / "summary.json"
    summary.write_text(summary.read_text().replace('"steps": 2', '"steps": 999'))
    with pytest.raises(SystemExit, match="summary.json: corrupt or changed"):
        study.main(["--out", str(out), "--pretrain", PRE, *STUDY])
