"""FDViT (tinyvit/fdvit.py) against the official code, AMD-AIG-AIMA/AMD_FDViT at commit b1119ac.

`Official*` below is a transcription of the official forward (fdvit.py `PoolingTransformer`,
`bilinear_conv_pooling`, `decoder`, `conv_embedding`; vision_transformer.py `Attention` with `get_lepe`,
`Block`, `Mlp`), written without einops and with the official module names, so that its state dict is
the official layout and its logits the reference for the converter.
"""
import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tinyvit
from tinyvit import finetune
from tinyvit.fdvit import FDLayer, FDViT, FDViTConfig, fdvit_flops, stage_grids
from tinyvit.presets import PRESETS

# Published counts (1000 classes, without the training-only decoders): the official README's 4.6 / 21.6 /
# 68.1 M, exactly, from the module definitions.
PUBLISHED = {"fdvit_ti": 4_603_420, "fdvit_s": 21_595_258, "fdvit_b": 68_099_320}
WITH_DECODERS = {"fdvit_ti": 5_400_422, "fdvit_s": 25_540_030, "fdvit_b": 80_542_768}
OUT_SIZE = {"fdvit_ti": [27, 19, 14, 10, 7], "fdvit_s": [27, 19, 14, 10, 7], "fdvit_b": [31, 22, 16, 11, 8]}
SMALL = dict(image_size=32, patch_size=4, stride=2, base_dims=(8, 6, 5, 6, 4), heads=(1, 2, 3, 2, 4), depth=(1, 2, 1, 1, 1))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# The official forward, transcribed.
# ---------------------------------------------------------------------------------------------


class OfficialAttention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.get_v = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim)

    def get_lepe(self, x):
        B, Head, N, C_p = x.shape
        H = W = int(math.sqrt(N))
        x = x.transpose(-2, -1).contiguous().view(B, C_p * Head, H, W)
        lepe = self.get_v(x)
        lepe = lepe.reshape(B, Head, C_p, N).permute(0, 1, 3, 2).contiguous()
        x = x.reshape(B, Head, C_p, N).permute(0, 1, 3, 2).contiguous()
        return x, lepe

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        v, lepe = self.get_lepe(v)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        x = (attn @ v) + lepe
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class OfficialMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class OfficialBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), OfficialAttention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), OfficialMlp(dim, int(dim * 4))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class OfficialTransformer(nn.Module):
    def __init__(self, base_dim, depth, heads):
        super().__init__()
        self.blocks = nn.ModuleList([OfficialBlock(base_dim * heads, heads) for _ in range(depth)])

    def forward(self, x):
        x = x.flatten(2).transpose(1, 2)  # 'b c h w -> b (h w) c'
        for blk in self.blocks:
            x = blk(x)
        return x


class OfficialPooling(nn.Module):  # bilinear_conv_pooling
    def __init__(self, in_feature, out_feature, out_size):
        super().__init__()
        d = torch.linspace(-1, 1, out_size)
        meshx, meshy = torch.meshgrid((d, d), indexing="ij")
        self.grid = torch.stack((meshy, meshx), 2)
        self.conv = nn.Conv2d(in_feature, out_feature, kernel_size=3, padding=1, stride=1)
        self.ln = nn.LayerNorm(in_feature)

    def forward(self, x):
        h = w = int(math.sqrt(x.shape[1]))
        x = self.ln(x).transpose(1, 2).reshape(x.shape[0], -1, h, w)  # 'b (h w) c -> b c h w'
        grid = self.grid.expand(x.shape[0], -1, -1, -1)
        x = F.grid_sample(x, grid.to(x.device).type_as(x), align_corners=True)
        return self.conv(x)


class OfficialDecoder(nn.Module):
    def __init__(self, in_feature, out_feature, out_size):
        super().__init__()
        self.up = nn.Upsample(size=out_size, mode="bilinear", align_corners=True)
        self.conv = nn.Conv2d(in_feature, out_feature, kernel_size=3, padding=1, stride=1)

    def forward(self, x):
        return self.up(self.conv(x))


class OfficialConvEmbedding(nn.Module):
    def __init__(self, in_channels, out_channels, patch_size, stride):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=patch_size, stride=stride, padding=0, bias=True)

    def forward(self, x):
        return self.conv(x)


class OfficialFDViT(nn.Module):  # PoolingTransformer, in eval mode
    def __init__(self, image_size, patch_size, stride, base_dims, depth, heads, out_size, num_classes=1000):
        super().__init__()
        channels = [b * h for b, h in zip(base_dims, heads)]
        width = math.floor((image_size - patch_size) / stride + 1)
        self.pos_embed = nn.Parameter(torch.randn(1, channels[0], width, width) * 0.02)
        self.patch_embed = OfficialConvEmbedding(3, channels[0], patch_size, stride)
        self.transformers, self.pools, self.decoders = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for s in range(len(depth)):
            self.transformers.append(OfficialTransformer(base_dims[s], depth[s], heads[s]))
            if s < len(heads) - 1:
                self.pools.append(OfficialPooling(channels[s], channels[s + 1], out_size[s + 1]))
                self.decoders.append(OfficialDecoder(channels[s + 1], channels[s], out_size[s]))
        self.norm = nn.LayerNorm(channels[-1], eps=1e-6)
        self.head = nn.Linear(channels[-1], num_classes)

    def forward(self, x):
        x = self.patch_embed(x) + self.pos_embed
        for stage in range(len(self.pools)):
            x = self.pools[stage](self.transformers[stage](x))
        x = self.norm(self.transformers[-1](x))
        return self.head(x.mean(dim=1))


def official(cfg: FDViTConfig, num_classes=1000, seed=0):
    torch.manual_seed(seed)
    model = OfficialFDViT(cfg.image_size, cfg.patch_size, cfg.stride, cfg.base_dims, cfg.depth, cfg.heads, cfg.grids,
                          num_classes).eval()
    with torch.no_grad():  # LayerNorms away from (1, 0), so that a swapped weight and bias would show
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


# ---------------------------------------------------------------------------------------------
# Architecture.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_presets_have_the_published_parameter_counts(name):
    with torch.device("meta"):
        model = tinyvit.create_model(name)
        assert n_params(model) == PUBLISHED[name]
        assert not any(".decoder." in k for k in model.state_dict())
        assert n_params(model.set_reconstruction(0.2)) == WITH_DECODERS[name]
    assert model.cfg.grids == OUT_SIZE[name]  # the size rule gives the official out_size at 224 px


def test_grid_rule_at_other_sizes_and_a_clear_refusal():
    assert stage_grids(384, 16, 8) == [47, 33, 24, 17, 12]
    assert stage_grids(32, 4, 2) == [15, 11, 8, 5, 4]
    with pytest.raises(ValueError, match="image_size=16: the stage grids would be"):
        FDViTConfig(image_size=16)  # W0 = 1: the later grids round to 1, 1, 1, 0
    model = FDViT(FDViTConfig(**SMALL, num_classes=3)).eval()
    model.set_image_size(48)
    assert model.cfg.grids == stage_grids(48, 4, 2) and model.pos_embed.shape[-1] == 23
    assert model(torch.randn(2, 3, 48, 48)).shape == (2, 3)
    with pytest.raises(ValueError, match=r"expected images \[B, 3, 48, 48\]"):
        model(torch.randn(2, 3, 32, 32))


def test_fd_layer_is_the_official_grid_sample_and_equals_interpolate_then_conv():
    torch.manual_seed(0)
    ours = FDLayer(12, 7, out_side=10).eval()
    ref = OfficialPooling(12, 7, 10).eval()
    with torch.no_grad():
        ours.ln.weight.uniform_(0.5, 1.5)
        ours.ln.bias.uniform_(-0.5, 0.5)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 14 * 14, 12)
    torch.testing.assert_close(ours(x, 14), ref(x), atol=1e-5, rtol=1e-5)
    # ... which is interpolate(bilinear, align_corners=True) of the normalised map, then the 3x3 conv
    m = F.layer_norm(x, (12,), ours.ln.weight, ours.ln.bias, 1e-5).transpose(1, 2).reshape(3, 12, 14, 14)
    up = F.interpolate(m, size=(10, 10), mode="bilinear", align_corners=True)
    torch.testing.assert_close(ours(x, 14), ours.conv(up), atol=1e-6, rtol=1e-6)
    # output pixel j reads input coordinate j * (14 - 1) / (10 - 1): a non-integer stride of 1.44
    grid_x = ((ref.grid[0, :, 0] + 1) / 2 * (14 - 1))
    torch.testing.assert_close(grid_x, torch.arange(10) * 13 / 9)


def test_shapes_per_stage_and_the_timm_interface():
    model = FDViT(FDViTConfig(**SMALL, num_classes=5)).eval()
    x = torch.randn(2, 3, 32, 32)
    widths, grids = model.cfg.widths, model.cfg.grids
    feats, inter = model.forward_intermediates(x)
    assert [tuple(t.shape) for t in inter] == [(2, c, g, g) for c, g in zip(widths, grids)]
    assert feats.shape == (2, grids[-1] ** 2, widths[-1]) and model.num_features == widths[-1]
    nlc = model.forward_intermediates(x, indices=2, output_fmt="NLC", intermediates_only=True)
    assert [tuple(t.shape) for t in nlc] == [(2, grids[3] ** 2, widths[3]), (2, grids[4] ** 2, widths[4])]
    torch.testing.assert_close(model.forward_features(x), feats)
    torch.testing.assert_close(model.forward_head(feats), model(x))
    assert model.forward_head(feats, pre_logits=True).shape == (2, widths[-1])
    model.reset_classifier(0)
    assert model(x).shape == (2, widths[-1]) and model.num_classes == 0 and isinstance(model.get_classifier(), nn.Identity)


# ---------------------------------------------------------------------------------------------
# The masked reconstruction.
# ---------------------------------------------------------------------------------------------


def test_reconstruction_is_zero_for_a_perfect_decoder():
    """An FD layer that keeps the grid, identity convs, tokens already normalised, no masking: the
    decoder rebuilds the stage output exactly, so the MSE is 0; masking tokens then costs something."""
    cfg = FDViTConfig(**dict(SMALL, base_dims=(8, 6, 4, 6, 4)), decoders=True, mask_prob=0.0)  # widths 8, 12, 12, ...
    model = FDViT(cfg).train()
    stage = model.stages[1]
    c = cfg.widths[1]
    stage.downsample.out_side = cfg.grids[1]  # no resampling
    with torch.no_grad():
        for conv in (stage.downsample.conv, stage.decoder.conv):
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[:, :, 1, 1] = torch.eye(c)
    side = cfg.grids[1]
    xt = torch.randn(2, side * side, c)
    xt = (xt - xt.mean(-1, keepdim=True)) / xt.std(-1, unbiased=False, keepdim=True)  # LN's fixed point
    assert stage.reconstruct(xt, side).item() < 1e-8
    stage.mask_prob = 0.5
    assert stage.reconstruct(xt, side).item() > 0.1


def test_decoders_run_in_training_only_and_the_loss_reaches_every_part():
    model = FDViT(FDViTConfig(**SMALL, num_classes=3)).set_reconstruction(0.2)
    calls = []
    for s in model.stages[:-1]:
        s.decoder.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        model(x)
    assert calls == [] and model.auxiliary_loss() is None  # eval: logits only
    model.train()
    logits = model(x)
    aux = model.auxiliary_loss()
    assert len(calls) == 4 and aux is not None and aux.ndim == 0 and model.auxiliary_loss() is None  # taken once
    (F.cross_entropy(logits, torch.tensor([0, 1, 2][:2])) + 0.03 * aux).backward()
    for name in ("stages.0.blocks.0.attn.qkv.weight", "stages.0.downsample.conv.weight", "stages.0.decoder.conv.weight"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name
    model.set_reconstruction(None)
    assert not any(".decoder." in k for k in model.state_dict()) and not model.cfg.decoders


def test_save_load_round_trip_without_the_decoders(tmp_path):
    model = FDViT(FDViTConfig(**SMALL, num_classes=4)).set_reconstruction(0.2).eval()
    model.preprocess = PRESETS["fdvit_ti"]["preprocess"].with_image_size(32)
    tinyvit.save_pretrained(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["arch"] == "fdvit" and config["config"]["decoders"] is False
    from safetensors.torch import load_file

    assert not any(".decoder." in k for k in load_file(tmp_path / "m" / "model.safetensors"))
    back = tinyvit.load_pretrained(tmp_path / "m")
    assert isinstance(back, FDViT) and not back.cfg.decoders and back.preprocess == model.preprocess
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(back(x), model(x), atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# Official weights through the converter.
# ---------------------------------------------------------------------------------------------


def test_official_release_layout_loads_with_equal_logits(tmp_path):
    """fdvit_ti's shapes, random weights in the official layout, wrapped as main.py saves them."""
    cfg = FDViTConfig(**PRESETS["fdvit_ti"]["config"])
    ref = official(cfg)
    path = tmp_path / "fdvit_ti.pth"
    torch.save({"model": ref.state_dict(), "model_ema": ref.state_dict(), "epoch": 299,
                "args": argparse.Namespace(model="fdvit_ti", ratio=0.03, mask_thre=0.2)}, path)
    model = tinyvit.load_pretrained(path)  # heads from the preset of the same widths and depths
    assert isinstance(model, FDViT) and model.cfg.heads == cfg.heads and model.cfg.image_size == 224
    assert model.cfg.decoders  # the official file keeps its decoders: loaded, unused in eval
    assert model.preprocess == PRESETS["fdvit_ti"]["preprocess"]
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=2e-5, rtol=1e-4)
    # a preset by name loads it too, and create_model takes it as the preset's weights
    assert tinyvit.load_pretrained(path, name="fdvit_ti").cfg.heads == cfg.heads
    assert isinstance(tinyvit.create_model("fdvit_ti", pretrained=path), FDViT)


def test_the_hub_entry_reads_the_ports_pickle(tmp_path, monkeypatch):
    """create_model(pretrained=True) asks the hub for amd/FDViT_ti's pytorch_model.bin (here a cached
    file in the assumed port layout: no download)."""
    import huggingface_hub

    cfg = FDViTConfig(**PRESETS["fdvit_ti"]["config"])
    ref = official(cfg, seed=2)
    sd = {("classifier" + k[4:] if k.startswith("head.") else "fdvit." + k): v
          for k, v in ref.state_dict().items() if not k.startswith("decoders.")}
    torch.save(sd, tmp_path / "pytorch_model.bin")
    asked = []
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, file: asked.append((repo, file)) or str(tmp_path / "pytorch_model.bin"))
    model = tinyvit.create_model("fdvit_ti", pretrained=True)
    assert asked == [("amd/FDViT_ti", "pytorch_model.bin")] and not model.cfg.decoders
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=2e-5, rtol=1e-4)


def test_hugging_face_port_layout_loads_with_equal_logits(tmp_path):
    """The assumed HF layout (tinyvit/keymaps.py FDVIT_HF: unconfirmed): official names under `fdvit.`,
    the head as `classifier`, no decoders, a plain state dict in pytorch_model.bin."""
    cfg = FDViTConfig(**SMALL)
    ref = official(cfg, num_classes=6, seed=1)
    sd = {("classifier" + k[4:] if k.startswith("head.") else "fdvit." + k): v
          for k, v in ref.state_dict().items() if not k.startswith("decoders.")}
    (tmp_path / "hf").mkdir()
    torch.save(sd, tmp_path / "hf" / "pytorch_model.bin")
    model = tinyvit.load_pretrained(tmp_path / "hf" / "pytorch_model.bin", num_heads=list(cfg.heads))
    assert not model.cfg.decoders and model.cfg.stride == 2 and model.cfg.image_size == 32
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=2e-5, rtol=1e-4)


def test_converter_refuses_an_unknown_fdvit_without_heads_and_a_missing_key(tmp_path):
    ref = official(FDViTConfig(**SMALL), num_classes=2)
    torch.save(ref.state_dict(), tmp_path / "a.pth")
    with pytest.raises(tinyvit.CheckpointError, match=r"pass num_heads=\[...\]"):
        tinyvit.load_pretrained(tmp_path / "a.pth")
    sd = ref.state_dict()
    del sd["transformers.1.blocks.0.attn.get_v.weight"]
    torch.save(sd, tmp_path / "b.pth")
    with pytest.raises(tinyvit.CheckpointError, match=r"(?s)missing.*stages\.1\.blocks\.0\.attn\.get_v\.weight"):
        tinyvit.load_pretrained(tmp_path / "b.pth", num_heads=list(SMALL["heads"]))


# ---------------------------------------------------------------------------------------------
# FLOPs, freezing, fine-tuning.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,published,with_attention", [("fdvit_ti", 0.6, 0.822), ("fdvit_s", 2.8, 3.320),
                                                            ("fdvit_b", 11.9, 14.058)])
def test_published_flops_are_multiply_adds_of_the_layers_alone(name, published, with_attention):
    cfg = FDViTConfig(**PRESETS[name]["config"])
    layers = fdvit_flops(cfg, attention_matmuls=False) / 2e9  # multiply-adds
    assert round(layers, 1) == published
    assert round(fdvit_flops(cfg) / 2e9, 3) == with_attention
    if name == "fdvit_ti":  # the layer count is what module hooks see (ptflops' way): conv and linear only
        from tinyvit.flops import hooked_flops, model_flops

        model = FDViT(cfg)
        assert model_flops(model) == fdvit_flops(cfg)
        hooked = hooked_flops(model, torch.zeros(1, 3, 224, 224))
        assert hooked == fdvit_flops(cfg, attention_matmuls=False)


def test_unfreeze_last_trains_the_last_stage_norm_and_head():
    from tinyvit import freeze

    model = FDViT(FDViTConfig(**SMALL, num_classes=3)).set_reconstruction(0.2)
    split = freeze.apply(model, "last")
    assert split.trainable_groups() == ["stages.4", "norm", "head"]
    assert "pos_embed" in split.frozen_groups() and "stages.3" in split.frozen_groups()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("stages.4.", "norm.", "head.")) for n in trainable)
    model.train()
    x = torch.randn(2, 3, 32, 32)
    features = split.prefix(x)
    assert features.shape == (2, model.cfg.widths[4], model.cfg.grids[4], model.cfg.grids[4])
    out = split(features)
    assert model.auxiliary_loss() is None  # the frozen FD layers do not reconstruct
    model.eval()
    torch.testing.assert_close(out, model(x))


FD_RUN = ["--model", "fdvit_ti", "--weights", "none", "--image-size", "32",
          "--override", "patch_size=4,stride=2,base_dims=[8,6,5,6,4],heads=[1,2,3,2,4],depth=[1,1,1,1,1]",
          "--dataset", "synthetic", "--limit-train", "48", "--limit-val", "16", "--batch-size", "16",
          "--num-workers", "0", "--no-progress", "--epochs", "1"]


def test_finetune_with_the_reconstruction_loss_logs_both_terms(tmp_path, capsys):
    out = tmp_path / "run"
    assert finetune.main(FD_RUN + ["--unfreeze", "all", "--fd-ratio", "0.03", "--fd-mask", "0.2", "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "G with the attention matmuls" in log and "layers only" in log
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["train_recon_loss"] > 0
    assert row["train_cls_loss"] == pytest.approx(row["train_loss"] - 0.03 * row["train_recon_loss"])
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["arch"] == "fdvit" and any(".decoder." in k for k in state["model"])  # for --resume
    from safetensors.torch import load_file

    assert not any(".decoder." in k for k in load_file(out / "model.safetensors"))  # the exported model
    assert not tinyvit.load_pretrained(out).cfg.decoders
    # --resume rebuilds the model with its decoders from checkpoint.pt and keeps logging both terms
    assert finetune.main(["--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["train_recon_loss"] > 0


def test_finetune_last_stage_on_cached_features_and_fd_ratio_on_a_vit_is_refused(tmp_path, capsys):
    out = tmp_path / "last"
    assert finetune.main(FD_RUN + ["--unfreeze", "last", "--no-augment", "--epochs", "2", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["cached"] for r in rows] == [True, True] and "train_recon_loss" not in rows[0]
    assert "trainable: stages.4, norm, head" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="has no FD layers"):
        finetune.main(["--model", "vit_tiny_patch16_224", "--weights", "none", "--image-size", "32",
                       "--override", "patch_size=8,dim=32,depth=1,num_heads=2,mlp_dim=64", "--dataset", "synthetic",
                       "--limit-train", "16", "--epochs", "1", "--fd-ratio", "0.03", "--out", str(tmp_path / "vit")])


def test_export_refuses_an_fdvit_in_one_line(tmp_path):
    from tinyvit.export import ExportError, export_timm

    model = FDViT(FDViTConfig(**SMALL))
    model.preprocess = PRESETS["fdvit_ti"]["preprocess"].with_image_size(32)
    with pytest.raises(ExportError, match="a FDViT: neither transformers nor timm"):
        export_timm(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
