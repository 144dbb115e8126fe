"""MAE (tinyvit/mae.py) against facebookresearch/mae: masking, loss, positions, layer decay, the
encoder being a tinyvit ViT, and the pretrain -> finetune round trip through the command lines."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tinyvit.freeze import param_groups
from tinyvit.mae import (MaskedAutoencoder, finetune_model, kept_tokens, mae_loss, mae_sincos_2d, patchify,
                         random_masking, unpatchify)
from tinyvit.vit import VisionTransformer, sincos_2d


def small_vit(**kw):
    cfg = dict(image_size=16, patch_size=4, dim=32, depth=2, num_heads=4, mlp_dim=64, num_classes=0)
    cfg.update(kw)
    return VisionTransformer(**cfg)


# -- masking ------------------------------------------------------------------------------------


@pytest.mark.parametrize("L,ratio", [(16, 0.75), (49, 0.75), (10, 0.5), (7, 0.9), (196, 0.6)])
def test_masking_keeps_int_L_times_1_minus_r_per_row_and_unshuffling_restores_order(L, ratio):
    torch.manual_seed(0)
    b, d = 5, 3
    x = torch.arange(b * L, dtype=torch.float32).reshape(b, L, 1).expand(b, L, d).contiguous()
    visible, mask, ids_restore = random_masking(x, ratio)
    keep = int(L * (1 - ratio))
    assert visible.shape == (b, keep, d)
    assert (mask.sum(1) == L - keep).all() and set(mask.unique().tolist()) <= {0.0, 1.0}
    # the visible tokens are exactly the ones the mask calls visible, each once
    for i in range(b):
        kept = sorted(visible[i, :, 0].long().tolist())
        assert kept == sorted((x[i, :, 0][mask[i] == 0]).long().tolist())
    # masks differ between images (per-sample noise)
    if L >= 16:
        assert not all(torch.equal(mask[0], mask[i]) for i in range(1, b))
    # unshuffle: the shuffled sequence (visible first, then the rest) gathered with ids_restore is x again
    ids_shuffle = ids_restore.argsort(dim=1)
    shuffled = x.gather(1, ids_shuffle[..., None].expand(b, L, d))
    assert torch.equal(shuffled[:, :keep], visible)
    assert torch.equal(shuffled.gather(1, ids_restore[..., None].expand(b, L, d)), x)


def test_masking_with_a_generator_is_reproducible():
    x = torch.randn(2, 16, 4)
    a = random_masking(x, 0.75, torch.Generator().manual_seed(3))[1]
    b = random_masking(x, 0.75, torch.Generator().manual_seed(3))[1]
    assert torch.equal(a, b)


# -- loss ---------------------------------------------------------------------------------------


def test_loss_is_zero_for_a_perfect_reconstruction_and_ignores_visible_patches():
    torch.manual_seed(0)
    target = torch.randn(3, 16, 12)
    mask = torch.zeros(3, 16)
    mask[:, ::3] = 1
    assert mae_loss(target.clone(), target, mask).item() == 0.0
    wrong_visible = target.clone()
    wrong_visible[mask == 0] += 100.0  # garbage where nothing is hidden
    assert mae_loss(wrong_visible, target, mask).item() == 0.0
    wrong_hidden = target.clone()
    wrong_hidden[mask == 1] += 1.0
    assert mae_loss(wrong_hidden, target, mask).item() == pytest.approx(1.0)


def test_model_loss_matches_mae_formula_with_norm_pix_loss():
    torch.manual_seed(0)
    mae = MaskedAutoencoder(small_vit(), decoder_dim=16, decoder_depth=1, decoder_heads=2, norm_pix_loss=True)
    imgs = torch.randn(2, 3, 16, 16)
    loss, pred, mask = mae(imgs, torch.Generator().manual_seed(0))
    t = patchify(imgs, 4)
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** 0.5  # MAE's forward_loss
    expected = (((pred - t) ** 2).mean(-1) * mask).sum() / mask.sum()
    assert torch.allclose(loss, expected)
    assert pred.shape == (2, 16, 4 * 4 * 3) and mask.sum(1).tolist() == [12, 12]
    # MAE's patchify order: (h w) tokens of (p q c) pixels; unpatchify inverts it
    assert torch.equal(unpatchify(patchify(imgs, 4), 4, 3), imgs)
    assert torch.equal(patchify(imgs, 4)[0, 1, :3], imgs[0, :, 0, 4])


def test_encoder_sees_only_the_visible_tokens():
    mae = MaskedAutoencoder(small_vit(), decoder_dim=16, decoder_depth=1, decoder_heads=2)
    seen = []
    mae.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    latent, mask, _ = mae.forward_encoder(torch.randn(2, 3, 16, 16))
    assert seen == [(2, 1 + kept_tokens(16, 0.75), 32)] and latent.shape == (2, 5, 32)


# -- positions ----------------------------------------------------------------------------------


def mae_reference_table(embed_dim: int, grid_size: int) -> np.ndarray:
    """get_2d_sincos_pos_embed of facebookresearch/mae util/pos_embed.py, in numpy, as written there."""
    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float32)
        omega /= dim / 2.0
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32))  # w first
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])
    return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)


@pytest.mark.parametrize("grid,dim", [(1, 4), (2, 8), (3, 16), (4, 32), (7, 64)])
def test_sincos_table_equals_mae_formula(grid, dim):
    ours = mae_sincos_2d(grid, dim).numpy()
    np.testing.assert_allclose(ours, mae_reference_table(dim, grid), atol=1e-5)
    if dim > 4:  # and it is not big_vision's (tinyvit.vit.sincos_2d): same layout, other frequencies
        assert not np.allclose(ours, sincos_2d(grid, dim).numpy(), atol=1e-3) or grid == 1


def test_encoder_and_decoder_positions_are_maes_and_fixed():
    mae = MaskedAutoencoder(small_vit(), decoder_dim=16, decoder_depth=1, decoder_heads=2)
    enc = mae.encoder.pos_embed
    assert not enc.requires_grad
    assert torch.equal(enc[0, 0], torch.zeros(32))  # the class token's slot
    assert torch.allclose(enc[0, 1:], torch.from_numpy(mae_reference_table(32, 4)).float(), atol=1e-5)
    assert torch.allclose(mae.decoder_pos_embed[0, 1:], torch.from_numpy(mae_reference_table(16, 4)).float(), atol=1e-5)
    before = enc.clone()
    opt = torch.optim.AdamW([p for p in mae.parameters() if p.requires_grad], lr=1e-2)
    mae(torch.randn(2, 3, 16, 16))[0].backward()
    opt.step()
    assert torch.equal(mae.encoder.pos_embed, before)


def test_mae_initialisation():
    torch.manual_seed(0)
    mae = MaskedAutoencoder(small_vit(dim=64, num_heads=4), decoder_dim=32, decoder_depth=1, decoder_heads=2)
    fc1 = mae.encoder.blocks[0].mlp.fc1.weight  # xavier_uniform: bound sqrt(6 / (fan_in + fan_out))
    bound = math.sqrt(6 / (fc1.shape[0] + fc1.shape[1]))
    assert fc1.abs().max() <= bound and fc1.abs().max() > 0.9 * bound
    assert (mae.encoder.blocks[0].mlp.fc1.bias == 0).all()
    w = mae.encoder.patch_embed.proj.weight.view(64, -1)
    assert w.abs().max() <= math.sqrt(6 / (w.shape[0] + w.shape[1]))
    assert 0.01 < mae.mask_token.std() < 0.03 and 0.01 < mae.encoder.cls_token.std() < 0.03


def test_mae_refuses_what_its_code_cannot_do():
    with pytest.raises(ValueError, match="distillation"):
        MaskedAutoencoder(small_vit(distilled=True))
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskedAutoencoder(small_vit(), mask_ratio=0.99)
    with pytest.raises(ValueError, match="fc_norm"):
        MaskedAutoencoder(small_vit(fc_norm=True, pool="mean"))
    with pytest.raises(ValueError, match=r"MAE decoder \(decoder_dim=30.*divisible"):
        MaskedAutoencoder(small_vit(), decoder_dim=30, decoder_heads=4)
    with pytest.raises(ValueError, match="SPT|sees beyond its patch"):
        MaskedAutoencoder(small_vit(patch_embed="spt"))


def test_reconstruction_pastes_the_visible_patches():
    mae = MaskedAutoencoder(small_vit(), decoder_dim=16, decoder_depth=1, decoder_heads=2).eval()
    imgs = torch.randn(2, 3, 16, 16)
    masked, pasted, original = mae.reconstruct(imgs, torch.Generator().manual_seed(1))
    _, _, mask = mae(imgs, torch.Generator().manual_seed(1))
    visible = mask == 0
    assert torch.equal(patchify(pasted, 4)[visible], patchify(imgs, 4)[visible])
    assert (patchify(masked, 4)[~visible] == 0).all() and torch.equal(original, imgs)


# -- fine-tuning --------------------------------------------------------------------------------


def test_layer_decay_scales_for_a_12_block_model():
    d = 0.65
    model = small_vit(depth=12, num_classes=10, pool="mean", fc_norm=True)
    groups = param_groups(model, 0.05, d)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert scale_of[id(named["patch_embed.proj.weight"])] == d ** 13
    assert scale_of[id(named["cls_token"])] == d ** 13 and decay_of[id(named["cls_token"])] == 0
    assert scale_of[id(named["pos_embed"])] == d ** 13 and decay_of[id(named["pos_embed"])] == 0
    for k in range(12):  # block k is layer k + 1
        assert scale_of[id(named[f"blocks.{k}.attn.qkv.weight"])] == pytest.approx(d ** (13 - (k + 1)))
        assert decay_of[id(named[f"blocks.{k}.attn.qkv.weight"])] == 0.05
        assert decay_of[id(named[f"blocks.{k}.norm1.weight"])] == 0.0
    assert scale_of[id(named["head.weight"])] == 1.0 and scale_of[id(named["fc_norm.weight"])] == 1.0
    assert len(scale_of) == len(named)
    with pytest.raises(ValueError, match="layer-decay"):
        param_groups(model, 0.05, 1.5)


def test_mean_pooling_with_fc_norm_is_maes_global_pool():
    # models_vit.py, global_pool=True: x[:, 1:].mean(1) -> fc_norm (a new LayerNorm); `norm` deleted
    torch.manual_seed(0)
    model = small_vit(num_classes=5, pool="mean", fc_norm=True).eval()
    assert isinstance(model.norm, torch.nn.Identity)
    x = torch.randn(2, 3, 16, 16)
    tokens = model.run_blocks(model.embed(x))
    pooled = torch.nn.functional.layer_norm(tokens[:, 1:].mean(1), (32,), model.fc_norm.weight, model.fc_norm.bias, 1e-6)
    assert torch.allclose(model(x), model.head(pooled), atol=1e-5)


def test_finetune_model_from_a_pretrained_encoder():
    torch.manual_seed(0)
    mae = MaskedAutoencoder(small_vit(), decoder_dim=16, decoder_depth=1, decoder_heads=2)
    model = finetune_model(mae.encoder, 10, {"dim": 32, "depth": 2}, {"drop_path": 0.1})
    assert model.cfg.pool == "mean" and model.cfg.fc_norm and model.cfg.num_classes == 10
    assert model.cfg.drop_path == 0.1 and model.pos_embed.requires_grad
    assert torch.equal(model.blocks[1].mlp.fc2.weight, mae.encoder.blocks[1].mlp.fc2.weight)
    assert torch.equal(model.pos_embed, mae.encoder.pos_embed)
    assert model.head.weight.std() < 1e-4  # trunc_normal(2e-5), as main_finetune.py
    with pytest.raises(ValueError, match="dim: pretrained 32, asked 64"):
        finetune_model(mae.encoder, 10, {"dim": 64}, {})


# -- the command lines --------------------------------------------------------------------------

ARCH = "patch_size=4,dim=32,depth=2,num_heads=4,mlp_dim=64"


def test_pretrain_then_finetune_through_the_cli(tmp_path, capsys):
    from tinyvit import finetune, load_pretrained, pretrain, rundir

    out = tmp_path / "mae"
    code = pretrain.main(["--method", "mae", "--model", "vit_tiny_patch16_224", "--dataset", "digits",
                          "--image-size", "16", "--override", ARCH, "--epochs", "2", "--batch-size", "128",
                          "--decoder-dim", "16", "--decoder-depth", "1", "--decoder-heads", "2",
                          "--num-workers", "0", "--no-progress", "--out", str(out)])
    assert code == 0
    log = capsys.readouterr().out
    assert "training split only" in log and "1,347" in log
    for name in ("model.safetensors", "config.json", "checkpoint.pt", "metrics.jsonl", "summary.json",
                 "pretrain.json", "loss.png", "reconstruction-epoch001.png", "reconstruction-epoch002.png"):
        assert (out / name).is_file(), name
        rundir.verify(out / name)
    manifest = json.loads((out / rundir.MANIFEST).read_text())
    assert set(manifest["dataset"]) == {"train"}  # the validation split is never read
    encoder = load_pretrained(out)
    assert isinstance(encoder, VisionTransformer) and encoder.cfg.num_classes == 0
    history = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2 and all(math.isfinite(r["loss"]) for r in history)

    ft = tmp_path / "ft"
    code = finetune.main(["--model", "vit_tiny_patch16_224", "--weights", str(out), "--dataset", "digits",
                          "--image-size", "16", "--override", ARCH, "--unfreeze", "all", "--epochs", "1",
                          "--batch-size", "128", "--layer-decay", "0.75", "--lr", "1e-3", "--num-workers", "0",
                          "--limit-train", "200", "--no-progress", "--out", str(ft)])
    assert code == 0
    model = load_pretrained(ft)
    assert model.cfg.pool == "mean" and model.cfg.fc_norm and model.cfg.num_classes == 10
    # the blocks started from the encoder: they moved, but from it (one epoch at lr 1e-3 * decay)
    assert not torch.equal(model.blocks[0].attn.qkv.weight, encoder.blocks[0].attn.qkv.weight)
    assert (model.blocks[0].attn.qkv.weight - encoder.blocks[0].attn.qkv.weight).abs().max() < 0.05
    summary = json.loads((ft / "summary.json").read_text())
    assert summary["config"]["layer_decay"] == 0.75

    # a pretrain run resumes (more epochs) and refuses to be overwritten by accident
    with pytest.raises(SystemExit, match="--resume"):
        pretrain.main(["--method", "mae", "--model", "vit_tiny_patch16_224", "--dataset", "digits", "--out", str(out)])
    assert pretrain.main(["--out", str(out), "--resume", "--epochs", "3", "--no-progress"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_finetune_refuses_an_encoder_of_another_architecture(tmp_path):
    from tinyvit import finetune, save_pretrained

    enc = small_vit()
    save_pretrained(enc, tmp_path / "run")
    (tmp_path / "run" / "pretrain.json").write_text('{"method": "mae"}')
    with pytest.raises(SystemExit, match="dim: pretrained 32, asked 64"):
        finetune.main(["--model", "vit_tiny_patch16_224", "--weights", str(tmp_path / "run"), "--dataset", "digits",
                       "--image-size", "16", "--override", "patch_size=4,dim=64,depth=2,num_heads=4,mlp_dim=64",
                       "--out", str(tmp_path / "ft"), "--num-workers", "0"])


def test_study_pretrains_distils_and_draws_reference_lines(tmp_path, capsys):
    """The levers study's machinery on a tiny grid: a pretraining run per seed shared by every size, a
    ViT distilled from the ResNet run of the same images, and the raw-pixel reference lines."""
    from tinyvit import study

    vit = f"vit_tiny_patch16_224 --image-size 16 --override {ARCH},pool=mean"
    code = study.main([
        "--out", str(tmp_path / "s"), "--models", f"mae={vit} --layer-decay 0.75", f"dist={vit}",
        "r18=resnet18 --image-size 32", "--train-sizes", "20", "40", "--seeds", "0", "--steps", "2",
        "--pretrain", "mae=--epochs 1 --batch-size 128 --limit-train 256 --decoder-dim 16 --decoder-depth 1 --decoder-heads 2",
        "--teacher", "dist=r18", "--reference", "knn", "logreg",
        "--", "--dataset", "digits", "--recipe", "scratch", "--mixup", "0", "--cutmix", "0", "--batch-size", "32",
        "--num-workers", "0", "--limit-val", "90"])
    assert code == 0, capsys.readouterr().out
    out = tmp_path / "s"
    pre = out / "pretrain-mae-seed0"
    assert (pre / "summary.json").is_file() and json.loads((pre / "summary.json").read_text())["steps"] == 2
    for n in (20, 40):  # every size fine-tunes the one pretrained encoder; the distilled ViT reads its twin
        mae_run = json.loads((out / f"mae-n{n}-seed0" / "summary.json").read_text())["config"]
        assert mae_run["weights"] == str(pre) and mae_run["layer_decay"] == 0.75
        dist_run = json.loads((out / f"dist-n{n}-seed0" / "summary.json").read_text())["config"]
        assert dist_run["teacher"] == str(out / f"r18-n{n}-seed0")
    table = (out / "results.md").read_text()
    assert "pretrain steps" in table and "Reference, raw pixels" in table
    refs = json.loads((out / "reference.json").read_text())
    assert set(refs) == {"1-NN, raw pixels", "logistic regression, raw pixels"}
    assert all(0.3 < a <= 1 for accs in refs.values() for a in accs.values())
    assert (out / "scaling.png").is_file()
    # the same command again skips everything, pretraining included
    assert study.main(["--out", str(out), "--models", f"mae={vit} --layer-decay 0.75", "--train-sizes", "20",
                       "--seeds", "0", "--steps", "2", "--pretrain", "mae=--epochs 1 --batch-size 128 --limit-train 256 "
                       "--decoder-dim 16 --decoder-depth 1 --decoder-heads 2", "--", "--dataset", "digits", "--recipe",
                       "scratch", "--mixup", "0", "--cutmix", "0", "--batch-size", "32", "--num-workers", "0",
                       "--limit-val", "90"]) == 0
    assert "already finished" in capsys.readouterr().out


PRETRAIN = ["--method", "mae", "--model", "vit_tiny_patch16_224", "--dataset", "digits", "--image-size", "16",
            "--override", ARCH, "--batch-size", "32", "--limit-train", "160", "--decoder-dim", "16",
            "--decoder-depth", "1", "--decoder-heads", "2", "--num-workers", "0", "--no-progress"]


def test_a_stop_mid_epoch_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """Stopped after 7 steps (mid-epoch 2 of 5 steps each), resumed: the same encoder, bit for bit, as
    the run that was never stopped (batches, masks and schedule continue where they were)."""
    from safetensors.torch import load_file

    from tinyvit import finetune, pretrain

    assert pretrain.main(PRETRAIN + ["--epochs", "3", "--out", str(tmp_path / "straight")]) == 0

    class StopAfter(finetune.StopRequest):
        checks = 0

        @property
        def requested(self):
            StopAfter.checks += 1
            if StopAfter.checks >= 8:  # the check at step 7 (steps 1-5 and the epoch end made 6)
                self.signum = signal.SIGTERM
            return self.signum is not None

    monkeypatch.setattr(finetune, "StopRequest", StopAfter)
    out = tmp_path / "stopped"
    assert pretrain.main(PRETRAIN + ["--epochs", "3", "--out", str(out)]) == 143
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["batches_done"]) == (1, 2)
    monkeypatch.undo()
    assert pretrain.main(["--out", str(out), "--resume", "--no-progress"]) == 0
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    straight = [json.loads(l) for l in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in straight] == [r["loss"] for r in resumed]


def test_sigterm_saves_a_pretraining_checkpoint_and_exits_143(tmp_path):
    out, log = tmp_path / "run", tmp_path / "log.txt"
    argv = PRETRAIN + ["--epochs", "500", "--out", str(out)]
    with open(log, "w") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "tinyvit.pretrain", *argv], stdout=stdout, stderr=subprocess.PIPE,
                                text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while "epoch 1/500" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text() + proc.stderr.read()
        os.killpg(proc.pid, signal.SIGTERM)
        stderr = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 143 and "Traceback" not in stderr, log.read_text() + stderr
    assert "continue with: python -m tinyvit.pretrain" in log.read_text().lower()
    from tinyvit import rundir

    rundir.verify(out / "checkpoint.pt")
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] >= 1
    assert not (out / rundir.LOCK).exists()
