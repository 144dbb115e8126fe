"""Converters, end to end and offline: for every family, a tiny model of the library that defines the
format, with every weight perturbed, saved in that library's own layout, loaded by tinyvit, and
compared with that library's own forward (relative error < 1e-4 in fp32). Then the failure modes:
key and shape mismatches, code in pickles, truncated and foreign files, heads, image sizes, heads
count, and tinyvit's own save/load round trip."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from convert_fixtures import no_warnings, npz_from_timm, perturb, rel_err, tiny_timm_deit, tiny_timm_vit
from safetensors.torch import save_file

import tinyvit
from tinyvit.checkpoint import CheckpointError
from tinyvit.convert import load_pretrained
from tinyvit.presets import DEIT, GOOGLE, TORCHVISION
from tinyvit.vit import resample_pos_embed

TOL = 1e-4
X32 = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def quiet_load(*args, **kwargs):
    """load_pretrained, failing on any warning (a warning here would mean a dropped or zero head)."""
    with no_warnings():
        return load_pretrained(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# timm and the original DeiT release
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_timm_vit(tmp_path, fmt):
    ref = tiny_timm_vit()
    path = tmp_path / f"vit.{fmt}"
    if fmt == "pth":
        torch.save(ref.state_dict(), path)
    else:
        save_file(ref.state_dict(), path)
    model = quiet_load(path, num_heads=2)
    assert not model.training
    assert (model.cfg.dim, model.cfg.depth, model.cfg.patch_size, model.cfg.image_size) == (64, 2, 8, 32)
    assert model.cfg.num_classes == 10 and model.cfg.mlp_dim == 256 and model.cfg.qkv_bias
    with torch.no_grad():
        assert rel_err(model(X32), ref(X32)) < TOL
    assert model.preprocess == GOOGLE.with_image_size(32)  # timm's Google-derived weights: [-1, 1]


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_deit_release_file(tmp_path, wrapper):
    """DeiT's release .pth wraps the state dict ({'model': ..., plus training state})."""
    ref = tiny_timm_deit()
    path = tmp_path / "deit.pth"
    # as the DeiT repository's main.py saves them: training state and an argparse.Namespace beside
    torch.save({wrapper: ref.state_dict(), "epoch": 299, "args": argparse.Namespace(lr=5e-4)}, path)
    model = quiet_load(path, num_heads=2)
    assert model.cfg.distilled and model.head_dist.out_features == 10
    with torch.no_grad():
        assert rel_err(model(X32), ref(X32)) < TOL  # eval: mean of the two heads, as timm
    assert model.preprocess == DEIT.with_image_size(32)


def test_timm_hub_directory(tmp_path):
    """timm's hub layout: config.json with model_args (heads) and pretrained_cfg (preprocessing)."""
    import timm
    from timm.models._hub import save_for_hf

    args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)
    ref = perturb(timm.create_model("deit_tiny_patch16_224", pretrained=False, **args))
    save_for_hf(ref, str(tmp_path), model_args=args)
    model = quiet_load(tmp_path)
    assert model.cfg.num_heads == 4
    with torch.no_grad():
        assert rel_err(model(X32), ref(X32)) < TOL
    # deit_tiny's pretrained_cfg at 32 px: ImageNet statistics, bicubic, crop_pct 0.9 -> resize 35
    assert model.preprocess == tinyvit.Preprocess(32, DEIT.mean, DEIT.std, "bicubic", 35)


def test_qkv_without_bias(tmp_path):
    ref = tiny_timm_vit(qkv_bias=False)
    torch.save(ref.state_dict(), tmp_path / "v.pth")
    model = quiet_load(tmp_path / "v.pth", num_heads=2)
    assert not model.cfg.qkv_bias
    with torch.no_grad():
        assert rel_err(model(X32), ref(X32)) < TOL


# ---------------------------------------------------------------------------------------------
# Google vit_jax .npz
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "opt/target/"])
def test_google_npz_matches_timm_loader(tmp_path, prefix):
    from timm.models.vision_transformer import VisionTransformer, _load_weights

    from convert_fixtures import TINY

    ref = tiny_timm_vit(num_heads=4)
    path = tmp_path / "ViT-tiny.npz"
    npz_from_timm(ref, path, num_heads=4, prefix=prefix)
    # The fixture is right: timm's own npz loader reads it back into the same model.
    timm_loaded = VisionTransformer(**{**TINY, "num_heads": 4}).eval()
    _load_weights(timm_loaded, str(path))
    with torch.no_grad():
        assert rel_err(timm_loaded(X32), ref(X32)) < 1e-6
        model = quiet_load(path)  # the number of heads comes from the q kernel [d, h, dh]
        assert model.cfg.num_heads == 4
        assert rel_err(model(X32), timm_loaded(X32)) < TOL
    assert model.preprocess == GOOGLE.with_image_size(32)
    with pytest.raises(CheckpointError, match="4 heads.*num_heads=2"):
        load_pretrained(path, num_heads=2)


def test_google_in21k_pre_logits_and_zero_head(tmp_path):
    """Google's in21k files: Dense + tanh `pre_logits` before a zeroed head."""
    ref = tiny_timm_vit()
    g = np.random.default_rng(0)
    kernel, bias = g.normal(0, 0.1, (64, 48)).astype(np.float32), g.normal(0, 0.1, 48).astype(np.float32)
    with torch.no_grad():
        ref.head = torch.nn.Linear(48, 10)
        perturb(ref.head)
    npz_from_timm(ref, tmp_path / "a.npz", num_heads=2, pre_logits=(kernel, bias))
    model = quiet_load(tmp_path / "a.npz")
    assert model.cfg.pre_logits == 48
    with torch.no_grad():
        feats = ref.forward_head(ref.forward_features(X32), pre_logits=True)
        expected = ref.head(torch.tanh(feats @ torch.from_numpy(kernel) + torch.from_numpy(bias)))
        assert rel_err(model(X32), expected) < TOL

        ref.head.weight.zero_()
        ref.head.bias.zero_()
    npz_from_timm(ref, tmp_path / "zero.npz", num_heads=2, pre_logits=(kernel, bias))
    with pytest.warns(UserWarning, match="all zeros"):
        model = load_pretrained(tmp_path / "zero.npz")
    assert model.head.out_features == 10  # still loaded, as a backbone


# ---------------------------------------------------------------------------------------------
# Hugging Face transformers
# ---------------------------------------------------------------------------------------------


def hf_vit_config(**kw):
    from transformers import ViTConfig

    base = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=128, num_labels=10)
    return ViTConfig(**{**base, **kw})


@pytest.mark.parametrize("eps, act, ours", [(1e-12, "gelu", "gelu"), (1e-6, "gelu_pytorch_tanh", "gelu_tanh")])
def test_hf_vit_directory(tmp_path, eps, act, ours):
    """config.json's layer_norm_eps and hidden_act are honoured, so the logits are transformers'."""
    from transformers import ViTForImageClassification

    ref = perturb(ViTForImageClassification(hf_vit_config(layer_norm_eps=eps, hidden_act=act)))
    ref.save_pretrained(tmp_path)
    model = quiet_load(tmp_path)  # 4 heads: from num_attention_heads in config.json
    assert (model.cfg.num_heads, model.cfg.norm_eps, model.cfg.act) == (4, eps, ours)
    with torch.no_grad():
        assert rel_err(model(X32), ref(pixel_values=X32).logits) < TOL
    assert model.preprocess.resize_size is None and model.preprocess.mean == (0.5, 0.5, 0.5)


def test_hf_v5_in_memory_names(tmp_path):
    """transformers >= 5.9 names in memory (`vit.layers.N.attention.q_proj`), a bare file."""
    from transformers import ViTForImageClassification

    ref = perturb(ViTForImageClassification(hf_vit_config(layer_norm_eps=1e-6)))
    sd = ref.state_dict()
    assert "vit.layers.0.attention.q_proj.weight" in sd
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "v5.safetensors")
    model = quiet_load(tmp_path / "v5.safetensors", num_heads=4)
    with torch.no_grad():
        assert rel_err(model(X32), ref(pixel_values=X32).logits) < TOL


def test_hf_vit_model_with_pooler(tmp_path):
    """in21k ViTModel: no `vit.` prefix, and `pooler.dense` + tanh = pre_logits."""
    from transformers import ViTModel

    ref = perturb(ViTModel(hf_vit_config(layer_norm_eps=1e-6)))
    ref.save_pretrained(tmp_path)
    model = quiet_load(tmp_path)
    assert model.cfg.num_classes == 0 and model.cfg.pre_logits == 64
    with torch.no_grad():
        assert rel_err(model(X32), ref(pixel_values=X32).pooler_output) < TOL
        assert rel_err(model.forward_features(X32), ref(pixel_values=X32).last_hidden_state) < TOL


def test_hf_deit_distilled(tmp_path):
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    cfg = DeiTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, num_labels=10, layer_norm_eps=1e-6)
    ref = perturb(DeiTForImageClassificationWithTeacher(cfg))
    ref.save_pretrained(tmp_path)
    model = quiet_load(tmp_path)
    assert model.cfg.distilled
    with torch.no_grad():
        assert rel_err(model(X32), ref(pixel_values=X32).logits) < TOL
    assert model.preprocess == DEIT.with_image_size(32)


def test_hf_preprocessor_config(tmp_path):
    """preprocessor_config.json, as transformers writes it, sets the preprocessing."""
    from transformers import DeiTImageProcessor, ViTForImageClassification, ViTImageProcessor

    perturb(ViTForImageClassification(hf_vit_config())).save_pretrained(tmp_path)
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, resample=3, image_mean=[0.1, 0.2, 0.3])
    processor.save_pretrained(tmp_path)
    pre = load_pretrained(tmp_path).preprocess
    assert (pre.image_size, pre.resize_size, pre.interpolation, pre.mean) == (32, None, "bicubic", (0.1, 0.2, 0.3))

    DeiTImageProcessor(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32},
                       image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(tmp_path)
    pre = load_pretrained(tmp_path).preprocess
    assert (pre.image_size, pre.resize_size, pre.std) == (32, 36, (0.229, 0.224, 0.225))


# ---------------------------------------------------------------------------------------------
# torchvision
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mlp_names, representation", [("new", None), ("old", None), ("new", 48)])
def test_torchvision_vit(tmp_path, mlp_names, representation):
    from torchvision.models.vision_transformer import VisionTransformer

    ref = perturb(VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=64,
                                    mlp_dim=128, num_classes=10, representation_size=representation))
    sd = ref.state_dict()
    if mlp_names == "old":  # the released files' names (torchvision's MLPBlock._load_from_state_dict renames them)
        sd = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v for k, v in sd.items()}
        assert any("mlp.linear_1" in k for k in sd)
        fresh = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=64,
                                  mlp_dim=128, num_classes=10)
        fresh.load_state_dict(sd)  # torchvision itself accepts the old names: the fixture is real
    torch.save(sd, tmp_path / "vit_b.pth")
    model = quiet_load(tmp_path / "vit_b.pth", num_heads=2)
    assert model.cfg.pre_logits == representation
    with torch.no_grad():
        assert rel_err(model(X32), ref(X32)) < TOL
    assert model.preprocess == TORCHVISION.with_image_size(32)


@pytest.mark.parametrize("arch, block, layers", [("resnet18", "basic", [2, 2, 2, 2]),
                                                  ("resnet50", "bottleneck", [3, 4, 6, 3])])
def test_torchvision_resnet(tmp_path, arch, block, layers):
    import torchvision

    ref = perturb(getattr(torchvision.models, arch)(num_classes=10))
    torch.save(ref.state_dict(), tmp_path / f"{arch}.pth")
    model = quiet_load(tmp_path / f"{arch}.pth")
    assert (model.cfg.block, list(model.cfg.layers), model.cfg.num_classes) == (block, layers, 10)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) < TOL
    assert model.preprocess == TORCHVISION


def test_resnet_without_num_batches_tracked(tmp_path):
    import torchvision

    ref = perturb(torchvision.models.resnet18(num_classes=10))
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old.pth", _use_new_zipfile_serialization=False)  # also: legacy format
    model = quiet_load(tmp_path / "old.pth", name="resnet18", num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) < TOL
    assert model.preprocess == tinyvit.PRESETS["resnet18"]["preprocess"]


# ---------------------------------------------------------------------------------------------
# Strictness: one error that lists every missing, unexpected and wrong-shaped key
# ---------------------------------------------------------------------------------------------


def test_key_mismatch_report(tmp_path):
    sd = tiny_timm_vit().state_dict()
    del sd["blocks.1.norm1.weight"]
    sd["blocks.0.attn.extra"] = torch.zeros(3)
    sd["blocks.1.mlp.fc1.weight"] = torch.zeros(100, 64)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(path, num_heads=2)
    msg = str(err.value)
    assert str(path) in msg and "nothing was loaded" in msg
    assert "missing" in msg and "blocks.1.norm1.weight (64,)" in msg
    assert "unexpected" in msg and "blocks.0.attn.extra (3,)" in msg
    assert "wrong shape" in msg and "blocks.1.mlp.fc1.weight" in msg and "(100, 64)" in msg and "(256, 64)" in msg


def test_mismatch_names_the_source_key(tmp_path):
    from transformers import ViTForImageClassification

    ViTForImageClassification(hf_vit_config()).save_pretrained(tmp_path)
    from safetensors.torch import load_file

    sd = load_file(tmp_path / "model.safetensors")
    sd["vit.encoder.layer.1.intermediate.dense.weight"] = torch.zeros(100, 64)
    del sd["vit.encoder.layer.0.attention.attention.value.bias"]
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tmp_path)
    msg = str(err.value)
    assert "vit.encoder.layer.1.intermediate.dense.weight" in msg  # the file's own name
    assert "blocks.0.attn.qkv.bias" in msg and "no v" in msg


def test_preset_mismatch(tmp_path):
    torch.save(tiny_timm_vit().state_dict(), tmp_path / "v.pth")
    with pytest.raises(CheckpointError, match="preset 'vit_tiny_patch16_224'.*dim: file 64, preset 192"):
        load_pretrained(tmp_path / "v.pth", name="vit_tiny_patch16_224")


def test_preset_with_the_callers_overrides(tmp_path):
    """A shrunken preset saved by tinyvit loads back by name when the same overrides are given."""
    small = dict(dim=64, depth=2, num_heads=2, mlp_dim=128)
    model = tinyvit.create_model("vit_tiny_patch16_224", num_classes=10, image_size=32, **small)
    tinyvit.save_pretrained(model, tmp_path / "small")
    again = tinyvit.create_model("vit_tiny_patch16_224", num_classes=10, pretrained=tmp_path / "small", **small)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(again(x), model.eval()(x))
    with pytest.raises(CheckpointError, match="depth: file 2, preset 12"):
        tinyvit.create_model("vit_tiny_patch16_224", num_classes=10, pretrained=tmp_path / "small")


# ---------------------------------------------------------------------------------------------
# Safety and bad files
# ---------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates a file: the stand-in for arbitrary code in a checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("zip_format", [True, False])
def test_pickle_with_code_is_refused(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "x": _Payload(marker)}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError, match="refused.*weights_only") as err:
        load_pretrained(path)
    assert str(path) in str(err.value)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()


def test_npz_with_objects_is_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="refused"):
        load_pretrained(path)


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "npz", "legacy"])
def test_truncated_file(tmp_path, fmt):
    ref = tiny_timm_vit()
    path = tmp_path / f"cut.{fmt}"
    if fmt == "pth":
        torch.save(ref.state_dict(), path)
    elif fmt == "legacy":
        torch.save(ref.state_dict(), path, _use_new_zipfile_serialization=False)
    elif fmt == "safetensors":
        save_file(ref.state_dict(), path)
    else:
        npz_from_timm(ref, path, num_heads=2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_pretrained(path)
    assert str(path) in str(err.value)
    assert err.value.__cause__ is not None  # the underlying error is kept


def test_corrupt_npz_member(tmp_path):
    """A complete archive whose data was damaged: the zip CRC catches it, reported as corrupt."""
    path = tmp_path / "bad.npz"
    npz_from_timm(tiny_timm_vit(), path, num_heads=2)
    data = bytearray(path.read_bytes())
    data[len(data) // 3: len(data) // 3 + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_pretrained(path)


@pytest.mark.parametrize("content, match", [
    (b"hello, I am a text file\n", "not a checkpoint"),
    (b"", "empty file"),
    (json.dumps({"a": 1}).encode(), "not a checkpoint"),
])
def test_not_a_checkpoint(tmp_path, content, match):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as err:
        load_pretrained(path)
    assert str(path) in str(err.value)


def test_foreign_contents(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a dict of tensors"):
        load_pretrained(tmp_path / "list.pth")
    torch.save({"model": {"w": torch.zeros(1), "step": 3}}, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match="under 'model'.*'step' \\(int\\)"):
        load_pretrained(tmp_path / "mixed.pth")
    save_file({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="not a checkpoint of a known family.*encoder.weight"):
        load_pretrained(tmp_path / "other.safetensors")


def test_missing_path_and_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pretrained(tmp_path / "nope.pth")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="directory without weights"):
        load_pretrained(tmp_path / "d")


# ---------------------------------------------------------------------------------------------
# Heads, image size, number of heads, overrides
# ---------------------------------------------------------------------------------------------


def test_new_head_warns_and_keeps_the_backbone(tmp_path):
    ref = tiny_timm_deit()
    torch.save({"model": ref.state_dict()}, tmp_path / "d.pth")
    with pytest.warns(UserWarning, match="head of 10 classes was dropped"):
        model = load_pretrained(tmp_path / "d.pth", num_heads=2, num_classes=5)
    assert model.head.out_features == 5 and model.head_dist.out_features == 5 and model.cfg.num_classes == 5
    with torch.no_grad():
        feats = model.forward_features(X32)
        assert rel_err(feats, ref.forward_features(X32)) < TOL
    model = quiet_load(tmp_path / "d.pth", num_heads=2, num_classes=10)  # same count: the file's head, no warning
    with torch.no_grad():
        assert rel_err(model(X32), ref(X32)) < TOL


def test_image_size(tmp_path):
    ref = tiny_timm_vit()
    torch.save(ref.state_dict(), tmp_path / "v.pth")
    same = quiet_load(tmp_path / "v.pth", num_heads=2, image_size=32)
    assert torch.equal(same.pos_embed, ref.pos_embed)
    big = quiet_load(tmp_path / "v.pth", num_heads=2, image_size=48)
    assert big.cfg.image_size == 48 and big.preprocess.image_size == 48
    assert torch.allclose(big.pos_embed, resample_pos_embed(ref.pos_embed.detach(), 6, 1))
    assert big.pos_embed.shape == (1, 1 + 36, 64)
    with torch.no_grad():
        out = big(torch.randn(2, 3, 48, 48))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_num_heads_sources(tmp_path):
    ref = tiny_timm_vit(embed_dim=192, num_heads=3, depth=1, patch_size=16)
    torch.save(ref.state_dict(), tmp_path / "ti.pth")
    model = quiet_load(tmp_path / "ti.pth")  # width 192: the standard ViT-Ti value
    assert model.cfg.num_heads == 3
    with torch.no_grad():
        assert rel_err(model(X32), ref(X32)) < TOL

    torch.save(tiny_timm_vit().state_dict(), tmp_path / "w64.pth")
    with pytest.raises(CheckpointError, match="width 64.*num_heads"):
        load_pretrained(tmp_path / "w64.pth")
    with pytest.raises(CheckpointError, match="not divisible by num_heads=3"):
        load_pretrained(tmp_path / "w64.pth", num_heads=3)


def test_overrides(tmp_path):
    ref = tiny_timm_vit()
    torch.save(ref.state_dict(), tmp_path / "v.pth")
    model = quiet_load(tmp_path / "v.pth", num_heads=2, drop_path=0.1, patch_embed="linear")
    assert model.cfg.drop_path == 0.1 and model.patch_embed.proj.weight.shape == (64, 8 * 8 * 3)
    with torch.no_grad():
        assert rel_err(model(X32), ref(X32)) < TOL
    with pytest.raises(CheckpointError, match="(?s)unexpected.*pos_embed"):
        load_pretrained(tmp_path / "v.pth", num_heads=2, pos_embed="sincos")


# ---------------------------------------------------------------------------------------------
# tinyvit's own layout
# ---------------------------------------------------------------------------------------------


def test_save_pretrained_round_trip(tmp_path):
    torch.save({"model": tiny_timm_deit().state_dict()}, tmp_path / "d.pth")
    model = quiet_load(tmp_path / "d.pth", num_heads=2, image_size=40)
    tinyvit.save_pretrained(model, tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["config.json", "model.safetensors"]
    back = tinyvit.load_pretrained(tmp_path / "saved")  # the package-level entry point
    assert back.cfg == model.cfg and back.preprocess == model.preprocess and not back.training
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))

    import torchvision

    torch.save(perturb(torchvision.models.resnet18()).state_dict(), tmp_path / "r18.pth")
    resnet = quiet_load(tmp_path / "r18.pth", image_size=160)
    tinyvit.save_pretrained(resnet, tmp_path / "r")
    back = quiet_load(tmp_path / "r")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(back(x), resnet(x))
    assert back.preprocess == resnet.preprocess == TORCHVISION.with_image_size(160)  # carried by config.json


def test_tinyvit_directory_is_strict(tmp_path):
    model = tinyvit.create_model("vit_tiny_patch16_224", image_size=32, patch_size=8, dim=64, depth=2,
                                 num_heads=2, mlp_dim=128, num_classes=10)
    tinyvit.save_pretrained(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["config"]["depth"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json: the config does not describe these weights .*depth=3, but the weights hold 2 blocks"):
        load_pretrained(tmp_path)
