"""python -m tinyvit.finetune end to end on tiny data made here: outputs, resume after Ctrl-C,
frozen weights, bad input; and tinyvit.evaluate / tinyvit.predict on what it wrote."""
import json
import multiprocessing
import signal

import pytest
import torch

import tinyvit
from tinyvit import evaluate, finetune, predict, rundir
from image_fixtures import make_image_folder


TINY_VIT = ["--model", "vit_tiny_patch16_224", "--weights", "none", "--image-size", "32",
            "--override", "patch_size=8,dim=32,depth=3,num_heads=2,mlp_dim=64"]
SMALL_RUN = ["--dataset", "synthetic", "--limit-train", "96", "--limit-val", "40", "--batch-size", "16",
             "--num-workers", "0", "--no-progress"]
TIME_KEYS = {"seconds", "train_seconds", "val_seconds", "cache_seconds", "train_images_per_s"}


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def without_times(rows):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


def test_end_to_end_outputs_and_the_saved_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert finetune.main(TINY_VIT + SMALL_RUN + ["--epochs", "2", "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "unfreeze last:" in log and "trainable: blocks.2, norm, head" in log
    assert "epoch train loss" in log  # the summary table
    for name in finetune.OUTPUTS:
        assert (out / name).is_file(), name
    assert not (out / rundir.CACHE_DIR).exists()
    rows = metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "lr"} <= set(r)
        assert not r["cached"] and r["val_images"] == 40 and r["train_images"] == 96  # augmentation on: no train cache
    assert rows[0]["lr"] > rows[1]["lr"] > 0

    state = torch.load(out / "checkpoint.pt", weights_only=True)  # tensors and plain types only
    assert state["step"] == 2 * 96 // 16 and state["epoch"] == 2 and state["batches_done"] == 0 and len(state["history"]) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert sum(map(sum, summary["confusion"])) == 40 and summary["final"]["epoch"] == 2
    assert summary["trainable_groups"] == ["blocks.2", "norm", "head"]
    assert json.loads((out / "classes.json").read_text()) == tinyvit.data.SYNTHETIC_CLASSES
    for png in ("curves.png", "confusion.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    model = tinyvit.load_pretrained(out)
    assert model.cfg.num_classes == 10 and model.preprocess.image_size == 32
    assert model.preprocess.resize_size is None  # the 32-pixel recipe it was trained with travels with it

    result = evaluate.run(evaluate.EvalConfig(model_dir=str(out), dataset="synthetic", limit=40, num_workers=0))
    assert result["images"] == 40
    assert result["acc"] == pytest.approx(rows[-1]["val_acc"]) and result["loss"] == pytest.approx(rows[-1]["val_loss"], rel=1e-5)


def test_predict_lists_top_classes_by_name(tmp_path, capsys):
    out = tmp_path / "run"
    assert finetune.main(TINY_VIT + SMALL_RUN + ["--epochs", "1", "--out", str(out)]) == 0
    image = tmp_path / "x.png"
    tinyvit.data.Synthetic(5)[3][0].save(image)
    capsys.readouterr()
    assert predict.main([str(image), "--model-dir", str(out), "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(image) and len(lines) == 4
    probs = [float(line.split("%")[0]) for line in lines[1:]]
    assert probs == sorted(probs, reverse=True) and all(0 < p <= 100 for p in probs)
    assert all(any(name in line for name in tinyvit.data.SYNTHETIC_CLASSES) for line in lines[1:])

    (out / "classes.json").unlink()
    assert predict.main([str(image), "--model-dir", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    assert "showing class indices" in captured.err
    row = json.loads(captured.out)
    assert len(row["top"]) == 5 and row["top"][0]["class"] is None

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(SystemExit, match="broken.png: cannot read this image"):
        predict.main([str(broken), "--model-dir", str(out)])


RESUMABLE = TINY_VIT[:-1] + [TINY_VIT[-1] + ",dropout=0.1,drop_path=0.2"] + SMALL_RUN + ["--epochs", "4"]
STEPS_PER_EPOCH = 96 // 16


def cut_at(monkeypatch, step, action):
    """Run `action` right after optimizer step `step` (1-based), from the scheduler's step."""
    lambda_step = torch.optim.lr_scheduler.LambdaLR.step

    def step_then_act(self, *a, **kw):
        lambda_step(self, *a, **kw)
        if self.last_epoch == step:
            action()

    monkeypatch.setattr(torch.optim.lr_scheduler.LambdaLR, "step", step_then_act)
    return lambda: monkeypatch.setattr(torch.optim.lr_scheduler.LambdaLR, "step", lambda_step)


@pytest.mark.parametrize("path", ["tensor", "images"])
def test_ctrl_c_then_resume_gives_the_uninterrupted_run(tmp_path, monkeypatch, capsys, path):
    # Dropout and stochastic depth in the trainable block and augmentation make the run depend on
    # every random state a resume must restore; both data paths (one tensor, per-image PIL) are run.
    if path == "images":
        monkeypatch.setattr(tinyvit.data, "IN_MEMORY_LIMIT", 0)
    whole = tmp_path / "whole"
    assert finetune.main(RESUMABLE + ["--out", str(whole)]) == 0
    assert ("one tensor on the device" if path == "tensor" else "image files") in capsys.readouterr().out

    cut = tmp_path / "cut"
    restore = cut_at(monkeypatch, 2 * STEPS_PER_EPOCH + 3, lambda: signal.raise_signal(signal.SIGINT))  # 3 batches into epoch 3
    assert finetune.main(RESUMABLE + ["--out", str(cut)]) == 130
    restore()
    assert "stopped in epoch 3 after 3 of 6 batches" in capsys.readouterr().out
    state = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["batches_done"]) == (15, 2, 3)
    assert [r["epoch"] for r in metrics(cut)] == [1, 2]

    # A stale line (as if a crash had hit between writing metrics and the checkpoint) must not survive.
    with open(cut / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 3, "train_loss": 0.0}) + "\n")
    assert finetune.main(["--out", str(cut), "--resume", "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert without_times(metrics(cut)) == without_times(metrics(whole))
    a, b = tinyvit.load_pretrained(cut).state_dict(), tinyvit.load_pretrained(whole).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


class Killed(BaseException):
    """What kill -9 leaves: the process gone mid-step, nothing saved after the last checkpoint."""


def test_a_kill_mid_epoch_resumes_from_the_last_checkpoint_step_for_step(tmp_path, monkeypatch):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert finetune.main(RESUMABLE + ["--out", str(whole)]) == 0

    def kill():
        raise Killed

    restore = cut_at(monkeypatch, 2 * STEPS_PER_EPOCH + 4, kill)
    with pytest.raises(Killed):
        finetune.main(RESUMABLE + ["--out", str(killed)])
    restore()
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["step"] == 2 * STEPS_PER_EPOCH  # epoch 2's end
    assert finetune.main(["--out", str(killed), "--resume", "--no-progress"]) == 0
    assert without_times(metrics(killed)) == without_times(metrics(whole))
    a, b = tinyvit.load_pretrained(killed).state_dict(), tinyvit.load_pretrained(whole).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_to_more_epochs_and_rejects_changed_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert finetune.main(TINY_VIT + SMALL_RUN + ["--epochs", "1", "--out", str(out)]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(SystemExit, match=r"--lr 0.5 \(the run has 0.0001\)"):
        finetune.main(["--out", str(out), "--resume", "--lr", "0.5"])
    with pytest.raises(SystemExit, match="contradict"):
        finetune.main(["--out", str(out), "--resume", "--force"])
    assert (out / "checkpoint.pt").read_bytes() == before
    assert finetune.main(["--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert "the cosine schedule now spans 2 epochs" in capsys.readouterr().out
    assert [r["epoch"] for r in metrics(out)] == [1, 2]
    with pytest.raises(SystemExit, match="already has 2 epochs"):
        finetune.main(["--out", str(out), "--resume", "--epochs", "1"])


def test_a_used_out_dir_is_kept_unless_forced(tmp_path):
    out = tmp_path / "run"
    assert finetune.main(TINY_VIT + SMALL_RUN + ["--epochs", "1", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit, match="holds a tinyvit run: pass --resume to continue it, or --force to remove its 8 files"):
        finetune.main(TINY_VIT + SMALL_RUN + ["--epochs", "1", "--out", str(out)])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert finetune.main(TINY_VIT + SMALL_RUN + ["--epochs", "1", "--seed", "1", "--out", str(out), "--force"]) == 0
    assert [r["epoch"] for r in metrics(out)] == [1]  # the old run's lines are gone
    assert (out / "metrics.jsonl").read_bytes() != before["metrics.jsonl"]  # another seed: another run
    # (a directory holding files the run did not write: tests/test_rundir.py)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    ce = torch.nn.functional.cross_entropy
    calls = {"train": 0}

    def poisoned(logits, labels, *a, **kw):
        loss = ce(logits, labels, *a, **kw)
        if kw.get("reduction", "mean") == "mean":  # the training loss (validation sums)
            calls["train"] += 1
            if calls["train"] > 96 // 16:  # from epoch 2 on
                return loss * float("nan")
        return loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", poisoned)
    with pytest.raises(SystemExit, match="loss became NaN/Inf in epoch 2.*holds the last good state \\(epoch 1\\)"):
        finetune.main(TINY_VIT + SMALL_RUN + ["--epochs", "3", "--out", str(out)])
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert [r["epoch"] for r in metrics(out)] == [1]


def test_resnet_last_leaves_the_frozen_stages_and_their_statistics_bitwise(tmp_path):
    out = tmp_path / "run"
    args = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--override", "layers=[1,1,1,1]",
            "--unfreeze", "last", "--epochs", "1", "--seed", "3", "--out", str(out)] + SMALL_RUN
    assert finetune.main(args) == 0
    torch.manual_seed(3)  # finetune seeds the same way before it builds the model
    initial = tinyvit.create_model("resnet18", num_classes=10, image_size=32, layers=[1, 1, 1, 1]).state_dict()
    trained = tinyvit.load_pretrained(out).state_dict()
    for k, v in initial.items():
        if k.startswith(("layer4.", "fc.")):
            continue
        assert torch.equal(v, trained[k]), f"frozen {k} changed"
    assert not torch.equal(initial["layer4.0.bn2.running_var"], trained["layer4.0.bn2.running_var"])
    assert not torch.equal(initial["layer4.0.conv2.weight"], trained["layer4.0.conv2.weight"])


def test_imagefolder_run_and_a_corrupt_image(tmp_path):
    root = make_image_folder(tmp_path / "data")
    base = TINY_VIT + ["--dataset", "imagefolder", "--data-dir", str(root), "--batch-size", "4", "--epochs", "1",
                       "--no-progress"]
    assert finetune.main(base + ["--num-workers", "0", "--out", str(tmp_path / "ok")]) == 0
    assert json.loads((tmp_path / "ok" / "classes.json").read_text()) == ["class0", "class1"]
    bad = root / "train" / "class1" / "3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    before = set(multiprocessing.active_children())
    # In a DataLoader worker, so the error crosses a process boundary and must still name the file.
    with pytest.raises(SystemExit, match=f"{bad}: cannot read this image") as err:
        finetune.main(base + ["--num-workers", "1", "--out", str(tmp_path / "bad")])
    assert "Traceback" not in str(err.value)
    # The failed run's worker is gone, though the error's traceback (held in `err`) still reaches its loader:
    # a worker left alive keeps every file descriptor it inherited (a test session's browser pipe hung on one).
    assert set(multiprocessing.active_children()) <= before


@pytest.mark.parametrize("args, message", [
    (["--dataset", "imagefolder", "--data-dir", "{tmp}/nowhere"], "nowhere: no such directory"),
    (["--weights", "{tmp}/missing.pth"], "missing.pth: no such file or directory"),
    (["--override", "depth=3,wings=2"], "--override 'wings=2': expected KEY=VALUE"),
    (["--unfreeze", "4"], "--unfreeze 4: the model has only 3 blocks"),
    (["--batch-size", "16", "--warmup-epochs", "9"], "covers the whole run"),
])
def test_bad_input_is_a_clear_error_and_touches_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    argv = TINY_VIT + ["--dataset", "synthetic", "--limit-train", "32", "--epochs", "1", "--out", str(out)]
    with pytest.raises(SystemExit, match=message):
        finetune.main(argv + [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert not out.exists()


def test_unknown_preset_and_unfreeze_mode_are_usage_errors(capsys):
    for argv in (["--model", "vit_gigantic"], ["--unfreeze", "first"]):
        with pytest.raises(SystemExit) as err:
            finetune.main(argv)
        assert err.value.code == 2
    assert "invalid choice: 'vit_gigantic'" in capsys.readouterr().err


def test_a_checkpoint_of_another_architecture_is_refused_by_name(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "resnet"
    tinyvit.save_pretrained(tinyvit.create_model("resnet18", num_classes=10, layers=[1, 1, 1, 1]), ckpt)
    with pytest.raises(SystemExit, match=f"{ckpt}.*does not hold the architecture of preset 'vit_tiny_patch16_224'"):
        finetune.main(["--model", "vit_tiny_patch16_224", "--weights", str(ckpt), "--dataset", "synthetic",
                       "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_fine_tuning_from_a_checkpoint_path(tmp_path, capsys):
    torch.manual_seed(0)
    source = tmp_path / "pretrained"
    tinyvit.save_pretrained(tinyvit.create_model("vit_tiny_patch16_224", num_classes=7, image_size=48), source)
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="head of 7 classes was dropped"):
        assert finetune.main(["--model", "vit_tiny_patch16_224", "--weights", str(source), "--image-size", "32",
                              "--unfreeze", "head", "--epochs", "1", "--dataset", "synthetic", "--limit-train", "32",
                              "--limit-val", "16", "--batch-size", "16", "--num-workers", "0", "--no-progress",
                              "--out", str(out)]) == 0
    assert "--image-size 32 is below the checkpoint's 48" in capsys.readouterr().err
    src, got = tinyvit.load_pretrained(source).state_dict(), tinyvit.load_pretrained(out).state_dict()
    assert torch.equal(src["blocks.5.mlp.fc1.weight"], got["blocks.5.mlp.fc1.weight"])  # loaded, and frozen
    assert got["head.weight"].shape == (10, 192)  # a new head for the new classes
    assert got["pos_embed"].shape == (1, 5, 192)  # resampled from 48 to 32 pixels


def test_bf16_autocast_caches_in_bf16(tmp_path, capsys):
    out = tmp_path / "run"
    assert finetune.main(TINY_VIT + SMALL_RUN + ["--epochs", "1", "--amp", "bf16", "--no-augment", "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "cached train features: 96 x [17, 32] bfloat16 in memory" in log and "amp bfloat16" in log
    assert metrics(out)[0]["cached"]
