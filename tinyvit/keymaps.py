"""Key tables: how each official layout names a model's tensors, and the renaming into tinyvit's names.

tinyvit's module names are timm's (tinyvit/vit.py), so a checkpoint of any other family loads once
its keys are renamed, and a few tensors re-laid out, through one short table per family. A table
reads in the order of the model (embedding, blocks, final norm, heads), one row per tensor pattern:
the source name, the tinyvit name, the layout transform. The families, and the source that defines
each layout:

    google       vit_jax / AugReg .npz                     google-research/vision_transformer vit_jax/models_vit.py
                                                           (timm's _load_weights reads the same files)
    hf           Hugging Face ViT, ViTModel, DeiT          transformers models/vit/modeling_vit.py, models/deit/
                 (classic and v5 names)                    (conversion_mapping.py for v5's in-memory names)
    timm         timm / original DeiT .pth, hub safetensors timm vision_transformer.py, deit.py; facebookresearch/deit models.py
    torchvision  torchvision VisionTransformer             torchvision models/vision_transformer.py
    resnet       torchvision ResNet-18/34/50               torchvision models/resnet.py
    fdvit        FDViT's official release                   AMD-AIG-AIMA/AMD_FDViT fdvit.py (the FDVIT table's comment)
    fdvit_hf     the Hugging Face ports amd/FDViT_ti, _s, _b unconfirmed (see FDVIT_HF)
    tinyvit      a directory written by `save_pretrained`: no table, the names are tinyvit's

`map_keys(ckpt)` runs a checkpoint through its family's table and returns a `Mapped`: the renamed
tensors, the source key each came from, and everything that did not fit, so that the strict loader
(tinyvit/convert.py) reports every problem at once instead of stopping at the first. The export
(tinyvit/export.py) runs the same tables backwards to write Hugging Face and timm folders, so no
key name is written down twice. Reading the file and recognising its family is
tinyvit/checkpoint.py; this module only renames tensors it is given.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from einops import rearrange

from tinyvit.checkpoint import Checkpoint

# ---------------------------------------------------------------------------------------------
# Key tables: one per family, source name -> tinyvit (= timm) name + layout transform.
#
# A pattern is matched against the whole key. Slots: {i} a block index, {s} a ResNet stage,
# {j} a conv/bn index in a block, {wb} weight|bias, {bn} a BatchNorm tensor, {qkv} one of the
# three attention inputs. A target ending in "#{qkv}" is a third of the fused qkv projection;
# the three parts are concatenated in the order q, k, v afterwards (`_fuse_qkv`).
# ---------------------------------------------------------------------------------------------


def same(t):
    return t


def hwio_to_oihw(t):  # JAX conv kernel [p1, p2, c, d] -> torch [d, c, p1, p2]
    return rearrange(t, "p1 p2 c d -> d c p1 p2")


def transpose(t):  # JAX Dense kernel [in, out] -> torch Linear weight [out, in]
    return rearrange(t, "i o -> o i")


def heads_in(t):  # JAX DenseGeneral q/k/v kernel [d, h, dh] -> rows of qkv [(h dh), d]
    return rearrange(t, "d h dh -> (h dh) d")


def heads_out(t):  # JAX DenseGeneral out kernel [h, dh, d] -> proj weight [d, (h dh)]
    return rearrange(t, "h dh d -> d (h dh)")


def heads_bias(t):  # JAX q/k/v bias [h, dh] -> [(h dh)]
    return rearrange(t, "h dh -> (h dh)")


_ENC = "Transformer/encoderblock_{i}"
_MHA = _ENC + "/MultiHeadDotProductAttention_1"  # pre-Linen numbering, as the files store it
GOOGLE_NPZ = [
    ("embedding/kernel",                               "patch_embed.proj.weight",         hwio_to_oihw),
    ("embedding/bias",                                 "patch_embed.proj.bias",           same),
    ("cls",                                            "cls_token",                       same),
    ("Transformer/posembed_input/pos_embedding",       "pos_embed",                       same),
    (_ENC + "/LayerNorm_0/scale",                      "blocks.{i}.norm1.weight",         same),
    (_ENC + "/LayerNorm_0/bias",                       "blocks.{i}.norm1.bias",           same),
    (_MHA + "/{qkv}/kernel",                           "blocks.{i}.attn.qkv.weight#{qkv}", heads_in),
    (_MHA + "/{qkv}/bias",                             "blocks.{i}.attn.qkv.bias#{qkv}",  heads_bias),
    (_MHA + "/out/kernel",                             "blocks.{i}.attn.proj.weight",     heads_out),
    (_MHA + "/out/bias",                               "blocks.{i}.attn.proj.bias",       same),
    (_ENC + "/LayerNorm_2/scale",                      "blocks.{i}.norm2.weight",         same),
    (_ENC + "/LayerNorm_2/bias",                       "blocks.{i}.norm2.bias",           same),
    (_ENC + "/MlpBlock_3/Dense_0/kernel",              "blocks.{i}.mlp.fc1.weight",       transpose),
    (_ENC + "/MlpBlock_3/Dense_0/bias",                "blocks.{i}.mlp.fc1.bias",         same),
    (_ENC + "/MlpBlock_3/Dense_1/kernel",              "blocks.{i}.mlp.fc2.weight",       transpose),
    (_ENC + "/MlpBlock_3/Dense_1/bias",                "blocks.{i}.mlp.fc2.bias",         same),
    ("Transformer/encoder_norm/scale",                 "norm.weight",                     same),
    ("Transformer/encoder_norm/bias",                  "norm.bias",                       same),
    ("pre_logits/kernel",                              "pre_logits.weight",               transpose),
    ("pre_logits/bias",                                "pre_logits.bias",                 same),
    ("head/kernel",                                    "head.weight",                     transpose),
    ("head/bias",                                      "head.bias",                       same),
]

# Hugging Face, after dropping the `vit.` / `deit.` prefix. Both spellings of a block: the classic
# names stored on the hub (`encoder.layer.N...`) and transformers >= 5.9's in-memory names
# (`layers.N...`, transformers' `conversion_mapping.py`).
_L, _L5 = "encoder.layer.{i}", "layers.{i}"
HUGGING_FACE = [
    ("embeddings.cls_token",                           "cls_token",                       same),
    ("embeddings.distillation_token",                  "dist_token",                      same),
    ("embeddings.position_embeddings",                 "pos_embed",                       same),
    ("embeddings.patch_embeddings.projection.{wb}",    "patch_embed.proj.{wb}",           same),
    (_L + ".layernorm_before.{wb}",                    "blocks.{i}.norm1.{wb}",           same),
    (_L + ".attention.attention.{qkv}.{wb}",           "blocks.{i}.attn.qkv.{wb}#{qkv}",  same),
    (_L + ".attention.output.dense.{wb}",              "blocks.{i}.attn.proj.{wb}",       same),
    (_L + ".layernorm_after.{wb}",                     "blocks.{i}.norm2.{wb}",           same),
    (_L + ".intermediate.dense.{wb}",                  "blocks.{i}.mlp.fc1.{wb}",         same),
    (_L + ".output.dense.{wb}",                        "blocks.{i}.mlp.fc2.{wb}",         same),
    (_L5 + ".layernorm_before.{wb}",                   "blocks.{i}.norm1.{wb}",           same),
    (_L5 + ".attention.{qkv}_proj.{wb}",               "blocks.{i}.attn.qkv.{wb}#{qkv}",  same),
    (_L5 + ".attention.o_proj.{wb}",                   "blocks.{i}.attn.proj.{wb}",       same),
    (_L5 + ".layernorm_after.{wb}",                    "blocks.{i}.norm2.{wb}",           same),
    (_L5 + ".mlp.fc1.{wb}",                            "blocks.{i}.mlp.fc1.{wb}",         same),
    (_L5 + ".mlp.fc2.{wb}",                            "blocks.{i}.mlp.fc2.{wb}",         same),
    ("layernorm.{wb}",                                 "norm.{wb}",                       same),
    ("pooler.dense.{wb}",                              "pre_logits.{wb}",                 same),  # ViTModel (in21k)
    ("classifier.{wb}",                                "head.{wb}",                       same),
    ("cls_classifier.{wb}",                            "head.{wb}",                       same),  # DeiT distilled
    ("distillation_classifier.{wb}",                   "head_dist.{wb}",                  same),
]

# timm, the original DeiT release and tinyvit share names: the table only says what is accepted.
TIMM = [
    ("cls_token",                                      "cls_token",                       same),
    ("dist_token",                                     "dist_token",                      same),
    ("pos_embed",                                      "pos_embed",                       same),
    ("patch_embed.proj.{wb}",                          "patch_embed.proj.{wb}",           same),
    ("blocks.{i}.norm1.{wb}",                          "blocks.{i}.norm1.{wb}",           same),
    ("blocks.{i}.attn.qkv.{wb}",                       "blocks.{i}.attn.qkv.{wb}",        same),
    ("blocks.{i}.attn.proj.{wb}",                      "blocks.{i}.attn.proj.{wb}",       same),
    ("blocks.{i}.norm2.{wb}",                          "blocks.{i}.norm2.{wb}",           same),
    ("blocks.{i}.mlp.fc1.{wb}",                        "blocks.{i}.mlp.fc1.{wb}",         same),
    ("blocks.{i}.mlp.fc2.{wb}",                        "blocks.{i}.mlp.fc2.{wb}",         same),
    ("norm.{wb}",                                      "norm.{wb}",                       same),
    ("fc_norm.{wb}",                                   "fc_norm.{wb}",                    same),  # pool, then norm
    ("pre_logits.fc.{wb}",                             "pre_logits.{wb}",                 same),  # old timm in21k
    ("pre_logits.{wb}",                                "pre_logits.{wb}",                 same),  # tinyvit
    ("head.{wb}",                                      "head.{wb}",                       same),
    ("head_dist.{wb}",                                 "head_dist.{wb}",                  same),
]

_TV = "encoder.layers.encoder_layer_{i}"
TORCHVISION_VIT = [
    ("class_token",                                    "cls_token",                       same),
    ("conv_proj.{wb}",                                 "patch_embed.proj.{wb}",           same),
    ("encoder.pos_embedding",                          "pos_embed",                       same),
    (_TV + ".ln_1.{wb}",                               "blocks.{i}.norm1.{wb}",           same),
    (_TV + ".self_attention.in_proj_weight",           "blocks.{i}.attn.qkv.weight",      same),  # rows [q; k; v]
    (_TV + ".self_attention.in_proj_bias",             "blocks.{i}.attn.qkv.bias",        same),
    (_TV + ".self_attention.out_proj.{wb}",            "blocks.{i}.attn.proj.{wb}",       same),
    (_TV + ".ln_2.{wb}",                               "blocks.{i}.norm2.{wb}",           same),
    (_TV + ".mlp.0.{wb}",                              "blocks.{i}.mlp.fc1.{wb}",         same),
    (_TV + ".mlp.linear_1.{wb}",                       "blocks.{i}.mlp.fc1.{wb}",         same),  # the released files
    (_TV + ".mlp.3.{wb}",                              "blocks.{i}.mlp.fc2.{wb}",         same),
    (_TV + ".mlp.linear_2.{wb}",                       "blocks.{i}.mlp.fc2.{wb}",         same),
    ("encoder.ln.{wb}",                                "norm.{wb}",                       same),
    ("heads.pre_logits.{wb}",                          "pre_logits.{wb}",                 same),
    ("heads.head.{wb}",                                "head.{wb}",                       same),
]

RESNET = [
    ("conv1.weight",                                   "conv1.weight",                    same),
    ("bn1.{bn}",                                       "bn1.{bn}",                        same),
    ("layer{s}.{i}.conv{j}.weight",                    "layer{s}.{i}.conv{j}.weight",     same),
    ("layer{s}.{i}.bn{j}.{bn}",                        "layer{s}.{i}.bn{j}.{bn}",         same),
    ("layer{s}.{i}.downsample.0.weight",               "layer{s}.{i}.downsample.0.weight", same),
    ("layer{s}.{i}.downsample.1.{bn}",                 "layer{s}.{i}.downsample.1.{bn}",  same),
    ("fc.{wb}",                                        "fc.{wb}",                         same),
]

# FDViT (tinyvit/fdvit.py). The official module tree of `PoolingTransformer` (fdvit.py, commit b1119ac):
# `transformers.{s}.blocks.{i}` (vision_transformer.py's Block, with the LePE conv `attn.get_v`),
# `pools.{s}` (bilinear_conv_pooling: `ln`, `conv`) after stage s, `decoders.{s}` (the training-only
# decoder: `conv`; its nn.Upsample has no weights), `norm`, `head`. main.py saves
# `model_without_ddp.state_dict()` under 'model' (with optimizer, EMA and args beside it), decoders
# included: the model always builds them. tinyvit keeps each stage's FD layer and decoder in the stage.
_FD = "transformers.{stage}.blocks.{i}"
_FD_BLOCK = "stages.{stage}.blocks.{i}"
FDVIT = [
    ("patch_embed.conv.{wb}",                          "patch_embed.conv.{wb}",           same),
    ("pos_embed",                                      "pos_embed",                       same),  # [1, C0, W0, W0]
    (_FD + ".norm1.{wb}",                              _FD_BLOCK + ".norm1.{wb}",         same),
    (_FD + ".attn.qkv.{wb}",                           _FD_BLOCK + ".attn.qkv.{wb}",      same),
    (_FD + ".attn.get_v.{wb}",                         _FD_BLOCK + ".attn.get_v.{wb}",    same),
    (_FD + ".attn.proj.{wb}",                          _FD_BLOCK + ".attn.proj.{wb}",     same),
    (_FD + ".norm2.{wb}",                              _FD_BLOCK + ".norm2.{wb}",         same),
    (_FD + ".mlp.fc1.{wb}",                            _FD_BLOCK + ".mlp.fc1.{wb}",       same),
    (_FD + ".mlp.fc2.{wb}",                            _FD_BLOCK + ".mlp.fc2.{wb}",       same),
    ("pools.{stage}.ln.{wb}",                          "stages.{stage}.downsample.ln.{wb}", same),
    ("pools.{stage}.conv.{wb}",                        "stages.{stage}.downsample.conv.{wb}", same),
    ("decoders.{stage}.conv.{wb}",                     "stages.{stage}.decoder.conv.{wb}", same),
    ("norm.{wb}",                                      "norm.{wb}",                       same),
    ("head.{wb}",                                      "head.{wb}",                       same),
]
# The Hugging Face ports (amd/FDViT_ti, _s, _b: custom code, modeling_fdvit.py) could NOT be read for
# this table: only the file list is confirmed (config.json, configuration_fdvit.py, modeling_fdvit.py,
# and pytorch_model.bin, a plain OrderedDict of tensors whose size, 272 MB for FDViT-B, is its 68.1 M
# parameters without decoders). ASSUMED: the official module tree under `fdvit.` (transformers'
# `FDViTForImageClassification.fdvit = FDViTModel(...)`) and the head as `classifier`. A file in another
# layout is refused by the strict loader, naming every key, never loaded wrongly.
FDVIT_HF = [row for row in FDVIT if not row[0].startswith(("decoders.", "head."))] + [
    ("classifier.{wb}",                                "head.{wb}",                       same),
]

_SLOTS = {
    "i": r"\d+",
    "stage": r"\d+",
    "s": "[1-4]",
    "j": "[1-3]",
    "wb": "weight|bias",
    "bn": "weight|bias|running_mean|running_var|num_batches_tracked",
    "qkv": "query|key|value|q|k|v",
}


def compile_pattern(pattern: str) -> re.Pattern:
    """A table pattern as a regex: the literals escaped, each {slot} a named group. The export
    compiles the tinyvit side of a row with it, to run the table backwards."""
    pieces = re.split(r"\{(\w+)\}", pattern)  # literal, slot, literal, slot, ...
    return re.compile("".join(re.escape(p) if n % 2 == 0 else f"(?P<{p}>{_SLOTS[p]})" for n, p in enumerate(pieces)))


FAMILIES = {
    # family: (what it is, its table, the prefixes its keys may carry)
    "google": ("a Google vit_jax / AugReg .npz", GOOGLE_NPZ, ("opt/target/",)),
    "hf": ("a Hugging Face ViT / DeiT checkpoint", HUGGING_FACE, ("vit.", "deit.")),
    "timm": ("a timm / DeiT ViT state dict", TIMM, ()),
    "torchvision": ("a torchvision VisionTransformer state dict", TORCHVISION_VIT, ()),
    "resnet": ("a torchvision ResNet state dict", RESNET, ()),
    "fdvit": ("an official FDViT state dict", FDVIT, ()),
    "fdvit_hf": ("a Hugging Face FDViT port (amd/FDViT_*; assumed layout)", FDVIT_HF, ("fdvit.",)),
    "tinyvit": ("a tinyvit directory", None, ()),
}
_COMPILED = {fam: [(compile_pattern(p), t, f) for p, t, f in table]
             for fam, (_, table, _) in FAMILIES.items() if table}


# ---------------------------------------------------------------------------------------------
# Renaming through a table.
# ---------------------------------------------------------------------------------------------


@dataclass
class Mapped:
    """A checkpoint renamed to tinyvit's keys, with everything that did not fit recorded."""

    state: dict = field(default_factory=dict)  # tinyvit key -> tensor
    origin: dict = field(default_factory=dict)  # tinyvit key -> the source key(s) it came from
    unexpected: list = field(default_factory=list)  # "source key (shape)" that no table row reads
    problems: list = field(default_factory=list)  # layout errors, duplicates, incomplete q/k/v


def shape_of(t: torch.Tensor) -> tuple:  # for messages: (768, 3, 16, 16), not torch.Size([...])
    return tuple(t.shape)


def _strip(key: str, prefixes: tuple) -> str:
    for p in prefixes:
        if key.startswith(p):
            return key[len(p):]
    return key


def _fuse_qkv(out: Mapped) -> None:
    """Concatenate the `...#q`, `...#k`, `...#v` thirds into timm's fused qkv rows [q; k; v]."""
    groups: dict[str, dict] = {}
    for name in [n for n in out.state if "#" in n]:
        base, part = name.split("#")
        groups.setdefault(base, {})[part[0]] = name  # "query" / "q" -> "q"
    for base, parts in groups.items():
        names = [parts.get(p) for p in "qkv"]
        tensors = [out.state.pop(n) for n in names if n]
        sources = [out.origin.pop(n) for n in names if n]
        if None in names:
            missing = ", ".join(p for p in "qkv" if p not in parts)
            found = ", ".join(sorted(parts))
            out.problems.append(f"{base}: the file has the {found} part(s) but no {missing} ({sources})")
            continue
        if len({shape_of(t) for t in tensors}) != 1:
            shapes = ", ".join(f"{s} {shape_of(t)}" for s, t in zip(sources, tensors))
            out.problems.append(f"{base}: q, k, v have different shapes: {shapes}")
            continue
        out.state[base] = torch.cat(tensors, dim=0)  # [3 d, d] or [3 d]
        out.origin[base] = " + ".join(sources)


def map_keys(ckpt: Checkpoint) -> Mapped:
    """Rename (and transform) every source key through its family's table."""
    out = Mapped()
    _, _, prefixes = FAMILIES[ckpt.family]
    rows = _COMPILED[ckpt.family]
    for src, t in ckpt.tensors.items():
        key = _strip(src, prefixes)
        for regex, target, transform in rows:
            m = regex.fullmatch(key)
            if m:
                break
        else:
            out.unexpected.append(f"{src} {shape_of(t)}")
            continue
        name = target.format(**m.groupdict())
        try:
            value = transform(t)
        except Exception as e:  # wrong rank for the layout transform
            out.problems.append(f"{src} {shape_of(t)}: cannot convert to {name} with {transform.__name__} ({e})")
            continue
        if name in out.state:
            out.problems.append(f"{src} and {out.origin[name]} both map to {name}")
            continue
        out.state[name], out.origin[name] = value, src
    _fuse_qkv(out)
    return out
