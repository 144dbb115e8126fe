"""FixMatch (tinyvit/fixmatch.py): the pseudo-label mask, the EMA's arithmetic, the strong view, the
unlabelled labels never read, resume step for step, DDP splitting the unlabelled stream, and every
model tinyvit trains (an MAE-pretrained encoder too)."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from torch import nn

import tinyvit
from tinyvit import data, finetune, pretrain
from tinyvit.augment import BatchAugment, cutout_boxes
from tinyvit.fixmatch import EMA, Stream, unlabelled_loss
from test_finetune import cut_at, metrics, without_times

TINY = ["--model", "vit_tiny_patch16_224", "--weights", "none", "--image-size", "16",
        "--override", "patch_size=4,dim=32,depth=2,num_heads=2,mlp_dim=64,dropout=0.1"]
DIGITS = ["--dataset", "digits", "--limit-train", "48", "--limit-val", "40", "--batch-size", "16", "--unfreeze", "all",
          "--lr", "1e-3", "--num-workers", "0", "--no-progress", "--device", "cpu"]
FIXMATCH = ["--unlabelled", "rest", "--mu", "2", "--tau", "0.2", "--randaugment"]
RUN = TINY + DIGITS + FIXMATCH + ["--epochs", "3"]


def test_the_mask_keeps_pseudo_labels_at_or_past_tau_and_the_mean_counts_every_image():
    weak = torch.log(torch.tensor([[0.96, 0.02, 0.02], [0.50, 0.25, 0.25], [0.02, 0.97, 0.01], [0.1, 0.1, 0.8]]))
    weak.requires_grad_(True)
    strong = torch.randn(4, 3, requires_grad=True)
    loss, mask = unlabelled_loss(weak, strong, 0.95)
    assert mask.tolist() == [1.0, 0.0, 1.0, 0.0]  # 0.96 and 0.97 pass; 0.5 and 0.8 do not
    at = weak.detach().softmax(1)[0].max().item()
    assert unlabelled_loss(weak, strong, at)[1].tolist() == [1.0, 0.0, 1.0, 0.0]  # a probability equal to tau passes
    assert unlabelled_loss(weak, strong, at + 1e-6)[1].tolist() == [0.0, 0.0, 1.0, 0.0]
    ce = nn.functional.cross_entropy(strong, torch.tensor([0, 0, 1, 2]), reduction="none")
    torch.testing.assert_close(loss, (ce[0] + ce[2]) / 4)  # divided by all four, not the two kept
    loss.backward()
    assert weak.grad is None and strong.grad[1].abs().sum() == 0 and strong.grad[0].abs().sum() > 0
    assert unlabelled_loss(weak, strong, 1.0)[1].sum() == 0  # nothing reaches a probability of 1 here


def test_the_ema_averages_trained_parameters_and_copies_the_rest():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)  # frozen: copied, so a frozen prefix stays exactly itself
    ema = EMA(model, 0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(8, 3))  # BatchNorm's running statistics move
    ema.update(model, 80)  # past the warm-up: min(0.9, 81 / 90) = 0.9
    now = model.state_dict()
    for k in ("0.weight", "0.bias", "1.weight", "2.bias"):
        torch.testing.assert_close(ema.state[k], 0.9 * before[k] + 0.1 * now[k])
    with torch.no_grad():
        model[0].weight.add_(1.0)
    held = ema.state["0.weight"].clone()
    ema.update(model, 0)  # the first update's decay is 1 / 10: the average follows the weights at once
    torch.testing.assert_close(ema.state["0.weight"], 0.1 * held + 0.9 * model[0].weight)
    for k in ("2.weight", "1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(ema.state[k], now[k]), k
    live = {k: v.clone() for k, v in now.items()}
    with ema.swapped_into(model):
        assert torch.equal(model[0].weight, ema.state["0.weight"])
    assert all(torch.equal(model.state_dict()[k], live[k]) for k in live)


def test_the_strong_view_is_cut_out_in_grey_and_the_stream_is_a_function_of_the_step():
    boxes = cutout_boxes(500, 16, 8, torch.Generator().manual_seed(0))
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (top + h <= 16).all() and (h <= 8).all() and (h >= 1).all() and (w <= 8).all()
    assert (h == 8).float().mean() > 0.3 and (h < 8).any()  # clipped at the border where the centre is near it
    strong = BatchAugment(16, "bilinear", (0.5,) * 3, (0.25,) * 3, strong=True)
    x = torch.full((64, 3, 16, 16), 200, dtype=torch.uint8)
    params = strong.draw(64, torch.Generator().manual_seed(1))
    assert params["skipped"].float().mean().item() == pytest.approx(0.5, abs=0.15)
    assert len(params["level"].unique()) > 5  # a magnitude per image and op
    y = strong(x, params)
    t, l, h, w = params["cutout"][0].tolist()
    torch.testing.assert_close(y[0, :, t:t + h, l:l + w], torch.full((3, h, w), (127 / 255 - 0.5) / 0.25))

    a, b = Stream(10, 4, seed=3), Stream(10, 4, seed=3)
    stream = [i for step in range(5) for i in a.indices(step)]  # 20 = two whole passes over the 10 images
    assert sorted(stream[:10]) == sorted(stream[10:]) == list(range(10)) and stream[:10] != stream[10:]
    assert b.indices(3) == stream[12:16]  # step 3 alone, as a resume would draw it


def corrupting_labels(monkeypatch):
    """load_splits whose training images outside --limit-train's subset carry garbage for labels."""
    load = data.load_splits

    class Garbage(torch.utils.data.Dataset):
        def __init__(self, base, kept):
            self.base, self.kept = base, set(kept)

        def __len__(self):
            return len(self.base)

        def __getitem__(self, i):
            image, label = self.base[i]
            return (image, label) if i in self.kept else (image, "garbage")

    def corrupted(*args, **kwargs):
        splits = load(*args, **kwargs)
        t = splits.train
        splits.train = data.Subset(Garbage(t.base, t.indices), t.indices)
        return splits

    monkeypatch.setattr(data, "load_splits", corrupted)


def test_the_labels_of_unlabelled_images_are_never_read(tmp_path, monkeypatch, capsys):
    assert finetune.main(RUN + ["--epochs", "2", "--tau", "0", "--out", str(tmp_path / "clean")]) == 0
    log = capsys.readouterr().out
    assert "FixMatch: 1,299 unlabelled images" in log and "x 16 = 32 per step" in log
    corrupting_labels(monkeypatch)
    assert finetune.main(RUN + ["--epochs", "2", "--tau", "0", "--out", str(tmp_path / "garbage")]) == 0
    rows, clean = metrics(tmp_path / "garbage"), metrics(tmp_path / "clean")
    # tau 0: every pseudo-label trains, so the unlabelled images shape the run (and never their labels)
    assert without_times(rows) == without_times(clean) and rows[-1]["mask_rate"] == 1 and rows[-1]["train_unlabelled_loss"] > 0
    a, b = (tinyvit.load_pretrained(tmp_path / name).state_dict() for name in ("clean", "garbage"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "clean" / "summary.json").read_text())["config"]
    assert (config["unlabelled"], config["mu"], config["tau"], config["lambda_u"], config["ema"]) == ("rest", 2, 0.0, 1.0, None)


def test_ctrl_c_mid_epoch_then_resume_gives_the_uninterrupted_run_ema_included(tmp_path, monkeypatch, capsys):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert finetune.main(RUN + ["--out", str(whole)]) == 0
    restore = cut_at(monkeypatch, 3 + 2, lambda: signal.raise_signal(signal.SIGINT))  # 3 steps an epoch: into epoch 2
    assert finetune.main(RUN + ["--out", str(cut)]) == 130
    restore()
    state = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert state["step"] == 5 and state["ema"].keys() == state["model"].keys()
    assert not all(torch.equal(state["ema"][k], state["model"][k]) for k in state["model"])
    assert finetune.main(["--out", str(cut), "--resume", "--no-progress"]) == 0
    assert without_times(metrics(cut)) == without_times(metrics(whole))
    a, b = tinyvit.load_pretrained(cut).state_dict(), tinyvit.load_pretrained(whole).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The saved model is the EMA's, not the last step's weights.
    last = torch.load(whole / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a[k], last["ema"][k]) for k in a) and not all(torch.equal(a[k], last["model"][k]) for k in a)


def test_two_gloo_processes_split_the_unlabelled_stream_as_one_process_takes_it(tmp_path):
    argv = RUN + ["--epochs", "2"]
    argv[argv.index("--override") + 1] = "patch_size=4,dim=32,depth=2,num_heads=2,mlp_dim=64"  # no dropout: RNGs differ per rank
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "tinyvit.finetune", *argv, "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert finetune.main(argv + ["--out", str(tmp_path / "single")]) == 0
    for a, b in zip(metrics(tmp_path / "ddp"), metrics(tmp_path / "single"), strict=True):
        for key in ("train_loss", "train_acc", "train_unlabelled_loss", "mask_rate", "val_loss", "val_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key


@pytest.mark.parametrize("model", [
    ["--model", "resnet18", "--weights", "none", "--image-size", "32"],
    ["--model", "fdvit_ti", "--weights", "none", "--image-size", "32",
     "--override", "patch_size=4,stride=2,base_dims=[8,6,5,6,4],heads=[1,2,3,2,4],depth=[1,1,1,1,1]"],
    "mae"])
def test_every_model_trains_with_fixmatch(model, tmp_path, capsys):
    if model == "mae":
        arch = "patch_size=4,dim=32,depth=2,num_heads=4,mlp_dim=64"
        assert pretrain.main(["--model", "vit_tiny_patch16_224", "--dataset", "digits", "--image-size", "16",
                              "--override", arch, "--batch-size", "32", "--limit-train", "64", "--epochs", "1",
                              "--decoder-dim", "16", "--decoder-depth", "1", "--decoder-heads", "2", "--num-workers", "0",
                              "--no-progress", "--out", str(tmp_path / "mae")]) == 0
        model = ["--model", "vit_tiny_patch16_224", "--weights", str(tmp_path / "mae"), "--image-size", "16", "--override", arch]
    assert finetune.main(model + DIGITS + FIXMATCH + ["--epochs", "1", "--mu", "1", "--out", str(tmp_path / "run")]) == 0
    assert "FixMatch: 1,299 unlabelled images" in capsys.readouterr().out
    row = metrics(tmp_path / "run")[0]
    assert row["train_unlabelled_loss"] >= 0 and 0 <= row["mask_rate"] <= 1 and row["val_images"] == 40


@pytest.mark.parametrize("argv, message", [
    (["--mu", "3"], "--mu, --tau, --lambda-u and --ema set FixMatch, which needs --unlabelled rest"),
    (["--unlabelled", "rest", "--limit-train", "5000"], "--limit-train keeps every training image"),
    (["--unlabelled", "rest", "--mu", "0"], "--mu 0: expected at least 1"),
    (["--unlabelled", "rest", "--ema", "1"], r"--ema 1.0: expected a decay in \[0, 1\)"),
    # The README's recipe with the paper's tau: label smoothing keeps every prediction below 0.91.
    (["--unlabelled", "rest", "--recipe", "scratch", "--mixup", "0", "--cutmix", "0"],
     r"--tau 0.95: label smoothing 0.1 \(--label-smoothing; --recipe scratch sets 0.1\) trains a prediction "
     r"towards 0.91 at most"),
])
def test_fixmatch_flags_are_checked_in_one_line(argv, message, tmp_path):
    with pytest.raises(SystemExit, match=f"^tinyvit.finetune: error: .*{message}"):
        finetune.main(TINY + DIGITS + ["--epochs", "1", "--out", str(tmp_path / "run")] + argv)


def test_label_spreading_reads_only_the_subsets_labels_and_beats_1nn_at_67_digits(monkeypatch):
    """The study's semi-supervised reference line: scikit-learn's LabelSpreading over the whole training
    split, the labels outside the subset hidden; garbage in their place changes nothing."""
    from tinyvit import study

    clean = study.reference_accuracies("digits", None, [67, 202], 0, ["knn", "spreading"])
    load = data.load_splits

    def corrupted(*args, **kwargs):  # labels outside the 202-image subset (which holds the 67) are garbage
        splits = load(*args, **kwargs)
        kept = set(data.limit(splits.train, 202, 0).indices)
        base = splits.train

        class Garbage(torch.utils.data.Dataset):
            def __len__(self):
                return len(base)

            def __getitem__(self, i):
                image, label = base[i]
                return (image, label) if i in kept else (image, "garbage")

        splits.train = Garbage()
        return splits

    monkeypatch.setattr(data, "load_splits", corrupted)
    assert study.reference_accuracies("digits", None, [67, 202], 0, ["spreading"]) == {
        "label spreading, raw pixels": clean["label spreading, raw pixels"]}
    spreading, knn = clean["label spreading, raw pixels"], clean["1-NN, raw pixels"]
    assert spreading[67] > knn[67] + 0.05  # 94.9% against 86.9% when written
