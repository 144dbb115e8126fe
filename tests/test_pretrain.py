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


def test_kill_9_mid_pretraining_then_resume_matches_the_uninterrupted_run(tmp_path):
    """MAE pretraining killed (SIGKILL: nothing saved at the kill) in its third epoch, then --resume:
    it continues from the step checkpoint.pt holds (the end of epoch 2) and ends with the encoder and
    the epochs' losses of the run that was never stopped, bit for bit."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    argv = TINY + ["--epochs", "6", "--limit-train", "256", "--mask-ratio", "0.5"]
    assert pretrain.main(argv + ["--out", str(tmp_path / "straight")]) == 0
    out, log = tmp_path / "killed", tmp_path / "log.txt"
    with open(log, "w") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "tinyvit.pretrain", *argv, "--out", str(out)], stdout=stdout,
                                stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 240
        while "epoch 2/6" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL and "epoch 6/6" not in log.read_text()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] < 6 * 8
    assert pretrain.main(["--out", str(out), "--resume", "--no-progress"]) == 0
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    straight, resumed = (rundir_rows(tmp_path / "straight"), rundir_rows(out))
    assert [(r["epoch"], r["steps"], r["loss"]) for r in straight] == [(r["epoch"], r["steps"], r["loss"]) for r in resumed]


def rundir_rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_an_old_pretraining_checkpoint_is_refused_in_one_line(tmp_path):
    out = tmp_path / "run"
    assert pretrain.main(TINY + ["--epochs", "1", "--out", str(out)]) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    torch.save({"format": "tinyvit.pretrain", "version": 1, "epoch": 1, "batches_done": 0, "config": state["config"],
                "model": state["model"]}, out / "checkpoint.pt")
    rerecord(out / "checkpoint.pt")
    with pytest.raises(SystemExit, match=r"^tinyvit.pretrain: error: .*checkpoint.pt: a tinyvit.pretrain checkpoint of an "
                                         r"older version .* start over with --force$"):
        pretrain.main(["--out", str(out), "--resume", "--epochs", "2", "--no-progress"])


@pytest.mark.parametrize("model", ["resnet18", "fdvit_ti"])
def test_layer_decay_works_for_every_model(model, tmp_path):
    """One parameter-group builder (tinyvit/freeze.py) reads any model's group_matcher(): --layer-decay
    on a ResNet and an FDViT, as timm's param_groups_layer_decay groups them."""
    from timm.optim import param_groups_layer_decay

    import tinyvit
    from tinyvit.freeze import param_groups

    net = tinyvit.create_model(model, num_classes=10)
    ours = {n: g["lr_scale"] for g in param_groups(net, 0.05, 0.75) for n, p in net.named_parameters()
            if any(p is q for q in g["params"])}
    groups = param_groups_layer_decay(net, 0.05, getattr(net, "no_weight_decay", set)(), layer_decay=0.75)
    names = {id(p): n for n, p in net.named_parameters()}
    theirs = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert ours == pytest.approx(theirs) and len(set(ours.values())) > 3


def test_one_function_in_tinyvit_calls_backward_and_the_optimizer_step():
    """Outside tinyvit/kernels/ (whose backward passes are the kernels'), every objective trains
    through Trainer.train_step."""
    import ast
    from pathlib import Path

    found = set()
    for path in sorted((Path(__file__).resolve().parents[1] / "tinyvit").glob("*.py")):
        def visit(node, where):
            for child in ast.iter_child_nodes(node):
                inner = f"{where}.{child.name}" if isinstance(child, (ast.FunctionDef, ast.ClassDef)) else where
                if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute) and (
                        child.func.attr == "backward" or (child.func.attr == "step" and "optim" in ast.unparse(child))):
                    found.add((inner, child.func.attr))
                visit(child, inner)
        visit(ast.parse(path.read_text()), path.stem)
    assert found == {("trainer.Trainer.train_step", "backward"), ("trainer.Trainer.train_step", "step")}
