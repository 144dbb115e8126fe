"""Converters: official pretrained weights of every family into tinyvit, strictly.

`load_pretrained(source)` reads one checkpoint and returns a model in eval mode with the
preprocessing its weights expect. It goes through these steps, in the order of this file:

1. read the tensors safely: no checkpoint may run code (pickles via `weights_only=True`, npz with
   `allow_pickle=False`, safetensors). The format is sniffed from the bytes, not the extension.
2. recognise the family from the key names and rename every key through that family's table to
   tinyvit's names (which are timm's), transforming layouts on the way (JAX kernels, split q/k/v);
3. infer the architecture from the shapes (width, depth, patch, grid, MLP, prefix tokens, heads);
4. build the model and check every key and shape before loading anything; one error lists all
   missing, unexpected and wrong-shaped keys, naming the file;
5. optionally give it a new head (`num_classes`) or another resolution (`image_size`).

The families and where their layouts are documented (../shared/reference/WEIGHTS.md):
    google       vit_jax / AugReg .npz                         WEIGHTS.md section 1
    hf           Hugging Face ViT, ViTModel, DeiT (classic and v5 names)   section 2
    timm         timm / original DeiT .pth, timm hub safetensors          section 3
    torchvision  torchvision VisionTransformer                            section 4
    resnet       torchvision ResNet-18/34/50                              section 5
    tinyvit      a directory written by `save_pretrained`

Numerics. Every PyTorch port computes exact (erf) GELU with LayerNorm eps 1e-6, and so does tinyvit
by default, also for the Google files (trained with tanh GELU; the ports differ from JAX by ~1e-3).
A Hugging Face directory is the exception: its config.json says how transformers computes that
model (`layer_norm_eps`, usually 1e-12, and `hidden_act`), and tinyvit honours it, so the logits
are transformers' own. The weights were trained at eps 1e-6 (WEIGHTS.md 2.4); the difference is
~4e-4 in the logits. Pass `norm_eps=1e-6` to load_pretrained to reproduce timm instead.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from einops import rearrange
from torch import nn

from tinyvit import rundir
from tinyvit.atomic import write_atomic
from tinyvit.presets import DEIT, GOOGLE, PRESETS, TORCHVISION, build_model
from tinyvit.preprocess import HALF, Preprocess

FORMAT = "tinyvit"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model it describes."""


# ---------------------------------------------------------------------------------------------
# Saving: tinyvit's own layout, a directory with model.safetensors and config.json.
# ---------------------------------------------------------------------------------------------


def _arch_of(model: nn.Module) -> str:
    from tinyvit.resnet import ResNet
    from tinyvit.vit import VisionTransformer

    if isinstance(model, VisionTransformer):
        return "vit"
    if isinstance(model, ResNet):
        return "resnet"
    raise TypeError(f"save_pretrained expects a tinyvit VisionTransformer or ResNet, got {type(model).__name__}")


def save_pretrained(model: nn.Module, directory) -> Path:
    """Write `model.safetensors` (the state dict) and `config.json` (architecture, config and
    preprocessing) into `directory`; `load_pretrained(directory)` rebuilds the same model."""
    from safetensors.torch import save

    arch = _arch_of(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared or strided storage: store plain contiguous CPU copies.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    preprocess = getattr(model, "preprocess", None)
    config = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "arch": arch,
        "config": model.cfg.to_dict(),
        "preprocess": preprocess.to_dict() if preprocess is not None else None,
    }
    # Weights first: a config.json only ever describes weights that are complete on disk.
    write_atomic(directory / "model.safetensors", lambda f: f.write(save(tensors, metadata={"format": "pt"})))
    write_atomic(directory / "config.json", lambda f: f.write((json.dumps(config, indent=2) + "\n").encode()))
    return directory


# ---------------------------------------------------------------------------------------------
# 1. Reading tensors safely. A checkpoint never runs code.
# ---------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    path: Path  # the weight file itself
    tensors: dict  # source key -> tensor, as stored
    family: str = ""
    wrapper: Optional[str] = None  # "model" / "state_dict": the dict the weights were found under
    config: Optional[dict] = None  # config.json beside the weights (directories only)
    preprocessor: Optional[dict] = None  # Hugging Face preprocessor_config.json


def _read_torch(path: Path) -> object:
    import argparse

    try:
        # The DeiT repository's training checkpoints store their arguments as an argparse.Namespace,
        # a plain attribute bag that runs no code when rebuilt: the one class allowed beyond tensors.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused: this pickle holds objects other than tensors and plain containers, and "
            f"unpickling them could run code. Only weights are loaded (torch.load weights_only=True). "
            f"Re-save just the state dict, or convert it to safetensors. ({e})"
        ) from e
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read this PyTorch checkpoint; truncated or corrupt? ({e})") from e


def _read_npz(path: Path) -> dict:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: torch.from_numpy(np.array(npz[k])) for k in npz.files}
    except Exception as e:
        if isinstance(e, ValueError) and "allow_pickle" in str(e):  # numpy refusing an object array
            raise CheckpointError(f"{path}: refused: this .npz holds pickled objects, not plain arrays ({e})") from e
        raise CheckpointError(f"{path}: cannot read this .npz; truncated or corrupt? ({e})") from e


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read this safetensors file; truncated or corrupt? ({e})") from e


def _unwrap(obj: object, path: Path) -> tuple[dict, Optional[str]]:
    """The state dict inside a loaded pickle: DeiT's release files hold it under 'model', training
    checkpoints under 'state_dict'; nothing else in the file is read."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict), found a {type(obj).__name__}")
    if obj.get("format") == "tinyvit.finetune":  # finetune.CHECKPOINT_FORMAT (not imported: cheap loads)
        raise CheckpointError(f"{path}: this is a tinyvit resume checkpoint (a run's training state), not a model; "
                              + _run_hint(path.parent))
    wrapper = None
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), dict):
            obj, wrapper = obj[key], key
            break
    bad = [f"{k!r} ({type(v).__name__})" for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        where = f"under {wrapper!r} " if wrapper else ""
        raise CheckpointError(
            f"{path}: expected a state dict of tensors {where}but found other values: {', '.join(bad[:8])}"
            + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        )
    if obj and all(k.startswith("module.") for k in obj):  # saved from a DistributedDataParallel wrapper
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj), wrapper


def _run_hint(run: Path) -> str:
    """Where the model of a tinyvit.finetune run is. Its checkpoint.pt holds the weights too, but
    not the preprocessing the model is evaluated with nor the class list (classes.json): loading
    it as a bare state dict would guess both, wrongly, so the loader points at the run instead."""
    if (run / "model.safetensors").is_file() and (run / "config.json").is_file():
        return f"load the run directory {run} instead"
    return (f"the run in {run} has not finished (no model.safetensors yet): continue it with "
            f"python -m tinyvit.finetune --out {run} --resume, then load the run directory {run}")


def read_tensors(path) -> tuple[dict, Optional[str]]:
    """Source key -> tensor from one weight file, whatever its extension says.

    The format is sniffed from the first bytes: a zip archive is an .npz if it holds .npy members
    and a PyTorch checkpoint otherwise; safetensors starts with an 8-byte header length and '{';
    a legacy (pre-1.6) PyTorch file with a pickle protocol byte.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(
                f"{path}: a truncated or corrupt zip archive (neither a complete .npz nor a PyTorch checkpoint)"
            ) from e
        if any(n.endswith(".npy") for n in names):
            return _read_npz(path), None
        return _unwrap(_read_torch(path), path)
    if len(head) >= 9 and head[8:9] == b"{":
        return _read_safetensors(path), None
    if head[:1] == b"\x80":
        return _unwrap(_read_torch(path), path)
    raise CheckpointError(
        f"{path}: not a checkpoint: neither a .npz, a safetensors file nor a PyTorch file "
        f"(it starts with {head[:8]!r})"
    )


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read this JSON file ({e})") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found a {type(d).__name__}")
    return d


def read_checkpoint(source) -> Checkpoint:
    """A weight file, or a directory in Hugging Face / timm hub / tinyvit layout."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path to a checkpoint file or directory, got {type(source).__name__}")
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such checkpoint file or directory")
    config = preprocessor = None
    if source.is_dir():
        if (source / "config.json").is_file():
            config = _read_json(source / "config.json")
        if (source / "preprocessor_config.json").is_file():
            preprocessor = _read_json(source / "preprocessor_config.json")
        found = [source / n for n in ("model.safetensors", "pytorch_model.bin") if (source / n).is_file()]
        if not found:
            sharded = [n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
                       if (source / n).is_file()]
            hint = f" (sharded checkpoints, {sharded[0]}, are not supported)" if sharded else ""
            raise CheckpointError(
                f"{source}: a directory without weights: expected model.safetensors or pytorch_model.bin{hint}"
            )
        weights = found[0]  # safetensors first: it cannot hold code
    else:
        weights = source
    try:  # in a run directory of tinyvit.finetune: the bytes the run wrote (its manifest's SHA-256)
        for path in (weights, source / "config.json") if source.is_dir() else (weights,):
            if path.is_file():
                rundir.verify(path)
    except (rundir.ChecksumError, rundir.RunDirError) as e:
        raise CheckpointError(str(e)) from None
    tensors, wrapper = read_tensors(weights)
    if not tensors:
        raise CheckpointError(f"{weights}: holds no tensors")
    ckpt = Checkpoint(weights, tensors, wrapper=wrapper, config=config, preprocessor=preprocessor)
    ckpt.family = detect_family(ckpt)
    return ckpt


# ---------------------------------------------------------------------------------------------
# 2. Key tables: one per family, source name -> tinyvit (= timm) name + layout transform.
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
# (`layers.N...`, WEIGHTS.md 2.3).
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

_SLOTS = {
    "i": r"\d+",
    "s": "[1-4]",
    "j": "[1-3]",
    "wb": "weight|bias",
    "bn": "weight|bias|running_mean|running_var|num_batches_tracked",
    "qkv": "query|key|value|q|k|v",
}


def _compile(pattern: str) -> re.Pattern:
    pieces = re.split(r"\{(\w+)\}", pattern)  # literal, slot, literal, slot, ...
    return re.compile("".join(re.escape(p) if n % 2 == 0 else f"(?P<{p}>{_SLOTS[p]})" for n, p in enumerate(pieces)))


FAMILIES = {
    # family: (what it is, its table, the prefixes its keys may carry)
    "google": ("a Google vit_jax / AugReg .npz", GOOGLE_NPZ, ("opt/target/",)),
    "hf": ("a Hugging Face ViT / DeiT checkpoint", HUGGING_FACE, ("vit.", "deit.")),
    "timm": ("a timm / DeiT ViT state dict", TIMM, ()),
    "torchvision": ("a torchvision VisionTransformer state dict", TORCHVISION_VIT, ()),
    "resnet": ("a torchvision ResNet state dict", RESNET, ()),
    "tinyvit": ("a tinyvit directory", None, ()),
}
_COMPILED = {fam: [(_compile(p), t, f) for p, t, f in table] for fam, (_, table, _) in FAMILIES.items() if table}


def detect_family(ckpt: Checkpoint) -> str:
    """Which table reads this checkpoint, from a few unmistakable keys."""
    keys = set(ckpt.tensors)
    if ckpt.config is not None and ckpt.config.get("format") == FORMAT:
        return "tinyvit"
    if any(k.startswith(("params/", "opt/target/params/")) for k in keys):
        raise CheckpointError(
            f"{ckpt.path}: a big_vision checkpoint ('params/...' keys); its position embedding has no "
            f"class-token slot and its layout is not supported. Use the vit_jax / AugReg .npz files"
        )
    if any(k.endswith("embedding/kernel") or k.startswith(("Transformer/", "opt/target/Transformer/")) for k in keys):
        return "google"
    if any("embeddings.patch_embeddings.projection." in k for k in keys):
        return "hf"
    if "conv_proj.weight" in keys:
        return "torchvision"
    if "patch_embed.proj.weight" in keys:
        return "timm"
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        return "resnet"
    sample = ", ".join(repr(k) for k in sorted(keys)[:5])
    raise CheckpointError(
        f"{ckpt.path}: not a checkpoint of a known family ({len(keys)} tensors, e.g. {sample}); expected "
        f"a Google .npz, a Hugging Face ViT/DeiT, a timm/DeiT, a torchvision ViT or ResNet state dict"
    )


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


def _shape(t: torch.Tensor) -> tuple:
    return tuple(t.shape)


def _strip(key: str, prefixes: tuple) -> str:
    for p in prefixes:
        if key.startswith(p):
            return key[len(p):]
    return key


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
            out.unexpected.append(f"{src} {_shape(t)}")
            continue
        name = target.format(**m.groupdict())
        try:
            value = transform(t)
        except Exception as e:  # wrong rank for the layout transform
            out.problems.append(f"{src} {_shape(t)}: cannot convert to {name} with {transform.__name__} ({e})")
            continue
        if name in out.state:
            out.problems.append(f"{src} and {out.origin[name]} both map to {name}")
            continue
        out.state[name], out.origin[name] = value, src
    _fuse_qkv(out)
    return out


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
        if len({_shape(t) for t in tensors}) != 1:
            shapes = ", ".join(f"{s} {_shape(t)}" for s, t in zip(sources, tensors))
            out.problems.append(f"{base}: q, k, v have different shapes: {shapes}")
            continue
        out.state[base] = torch.cat(tensors, dim=0)  # [3 d, d] or [3 d]
        out.origin[base] = " + ".join(sources)


# ---------------------------------------------------------------------------------------------
# 3. The architecture, from the shapes.
# ---------------------------------------------------------------------------------------------

# What a ViT file cannot tell: the number of heads. Every official width has one standard value.
STANDARD_HEADS = {p["config"]["dim"]: p["config"]["num_heads"] for p in PRESETS.values() if p["arch"] == "vit"}


def _need(state: dict, keys: list, path: Path, what: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{path}: cannot infer the {what}: no {', '.join(missing)} in the file")


def _max_index(state: dict, pattern: str) -> Optional[int]:
    regex = re.compile(pattern)
    found = [int(m.group(1)) for k in state if (m := regex.match(k))]
    return max(found) if found else None


def infer_vit_config(state: dict, path: Path) -> dict:
    """ViTConfig fields (all but num_heads) from the shapes of a state dict in tinyvit names."""
    _need(state, ["patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight"], path, "ViT architecture")
    w = state["patch_embed.proj.weight"]
    if w.ndim != 4 or w.shape[2] != w.shape[3]:
        raise CheckpointError(
            f"{path}: patch embedding of shape {_shape(w)}; expected a square conv kernel [d, c, p, p]"
        )
    dim, in_channels, patch = w.shape[0], w.shape[1], w.shape[2]
    prefix = int("cls_token" in state) + int("dist_token" in state)
    pos = state["pos_embed"]
    if pos.ndim != 3:
        raise CheckpointError(f"{path}: position embedding of shape {_shape(pos)}; expected [1, tokens, d]")
    grid = math.isqrt(pos.shape[1] - prefix)
    if grid * grid != pos.shape[1] - prefix:
        raise CheckpointError(
            f"{path}: the position embedding has {pos.shape[1]} tokens, {prefix} prefix token(s) and "
            f"{pos.shape[1] - prefix} more, which is not a square patch grid"
        )
    head = state.get("head.weight")
    return dict(
        image_size=grid * patch,
        patch_size=patch,
        in_channels=in_channels,
        num_classes=head.shape[0] if head is not None else 0,
        dim=dim,
        depth=_max_index(state, r"blocks\.(\d+)\.") + 1,
        mlp_dim=state["blocks.0.mlp.fc1.weight"].shape[0],
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        class_token="cls_token" in state,
        # timm's fc_norm (the LayerNorm after pooling) comes with global_pool='avg'
        pool="cls" if "cls_token" in state and "fc_norm.weight" not in state else "mean",
        fc_norm="fc_norm.weight" in state,
        distilled="dist_token" in state,
        pre_logits=state["pre_logits.weight"].shape[0] if "pre_logits.weight" in state else None,
    )


def infer_resnet_config(state: dict, path: Path) -> dict:
    """ResNetConfig fields: the block type from layer1.0.conv3, blocks per stage from the indices."""
    _need(state, ["conv1.weight"], path, "ResNet architecture")
    layers = []
    for s in range(1, 5):
        last = _max_index(state, rf"layer{s}\.(\d+)\.")
        if last is None:
            raise CheckpointError(f"{path}: a ResNet state dict without any layer{s} block")
        layers.append(last + 1)
    fc = state.get("fc.weight")
    return dict(
        block="bottleneck" if "layer1.0.conv3.weight" in state else "basic",
        layers=layers,
        num_classes=fc.shape[0] if fc is not None else 0,
        in_channels=state["conv1.weight"].shape[1],
    )


def _file_num_heads(ckpt: Checkpoint) -> Optional[int]:
    """Google's q kernel is [d, h, dh]: the one format that stores the number of heads."""
    if ckpt.family != "google":
        return None
    for key, t in ckpt.tensors.items():
        if key.endswith("MultiHeadDotProductAttention_1/query/kernel") and t.ndim == 3:
            return t.shape[1]
    return None


def _config_num_heads(ckpt: Checkpoint) -> Optional[int]:
    """From config.json: Hugging Face's num_attention_heads, timm's model_args, or timm's
    architecture name when it is one of the presets."""
    cfg = ckpt.config or {}
    if "num_attention_heads" in cfg:
        return int(cfg["num_attention_heads"])
    model_args = cfg.get("model_args")
    if isinstance(model_args, dict) and "num_heads" in model_args:
        return int(model_args["num_heads"])
    arch = cfg.get("architecture")
    if isinstance(arch, str) and PRESETS.get(arch, {}).get("arch") == "vit":
        return PRESETS[arch]["config"]["num_heads"]
    return None


def resolve_num_heads(ckpt: Checkpoint, dim: int, num_heads: Optional[int], name: Optional[str]) -> int:
    """The file when it says (Google), else the argument, else config.json, else the preset named,
    else the standard preset of that width."""
    in_file = _file_num_heads(ckpt)
    if in_file is not None:
        if num_heads is not None and num_heads != in_file:
            raise CheckpointError(
                f"{ckpt.path}: the file has {in_file} heads (q kernel [d, h, dh]), but num_heads={num_heads}"
            )
        return in_file
    if num_heads is not None:
        return num_heads
    from_config = _config_num_heads(ckpt)
    if from_config is not None:
        return from_config
    if name is not None and PRESETS[name]["arch"] == "vit":
        return PRESETS[name]["config"]["num_heads"]
    if dim in STANDARD_HEADS:
        return STANDARD_HEADS[dim]
    raise CheckpointError(
        f"{ckpt.path}: a ViT of width {dim}: the file does not store its number of heads, and no official "
        f"width matches ({', '.join(f'{d}: {h}' for d, h in STANDARD_HEADS.items())}). Pass num_heads=..., or "
        f"name= a preset"
    )


def _hf_numerics(ckpt: Checkpoint) -> dict:
    """LayerNorm eps and GELU flavour as transformers computes this checkpoint (see the module doc)."""
    cfg, where = ckpt.config or {}, ckpt.path.parent / "config.json"
    out = {}
    if "layer_norm_eps" in cfg:
        out["norm_eps"] = float(cfg["layer_norm_eps"])
    act = cfg.get("hidden_act", "gelu")
    acts = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}
    if act not in acts:
        raise CheckpointError(f"{where}: hidden_act={act!r}; tinyvit supports {sorted(acts)}")
    out["act"] = acts[act]
    if cfg.get("pooler_act", "tanh") != "tanh":
        raise CheckpointError(f"{where}: pooler_act={cfg['pooler_act']!r}; only 'tanh' is supported")
    return out


def _timm_numerics(ckpt: Checkpoint) -> dict:
    """Pooling and activation from a timm hub config.json (`model_args`, or the top-level
    `global_pool`): what the shapes cannot tell, e.g. global_pool='avg' without fc_norm."""
    cfg, where = ckpt.config or {}, ckpt.path.parent / "config.json"
    args = cfg.get("model_args") if isinstance(cfg.get("model_args"), dict) else {}
    out = {}
    pool = args.get("global_pool", cfg.get("global_pool"))
    if pool is not None:
        pools = {"token": "cls", "avg": "mean"}
        if pool not in pools:
            raise CheckpointError(f"{where}: global_pool={pool!r}; tinyvit supports 'token' and 'avg'")
        out["pool"] = pools[pool]
    act = args.get("act_layer")
    if act is not None:
        acts = {"gelu": "gelu", "gelu_tanh": "gelu_tanh"}
        if act not in acts:
            raise CheckpointError(f"{where}: model_args.act_layer={act!r}; tinyvit supports {sorted(acts)}")
        out["act"] = acts[act]
    return out


def _check_preset(arch: str, config: dict, name: str, path: Path, overrides: dict) -> None:
    """With `name`, the file must hold that preset's architecture, as changed by the caller's
    overrides (the head may differ)."""
    preset = PRESETS[name]
    wanted = {**preset["config"], **overrides}
    if preset["arch"] == "vit":
        wanted.setdefault("distilled", False)

    def norm(v):
        return tuple(v) if isinstance(v, (list, tuple)) else v

    diff = [f"{k}: file {config.get(k)!r}, preset {v!r}" for k, v in wanted.items()
            if k in config and norm(v) != norm(config[k])]
    if preset["arch"] != arch:
        diff.insert(0, f"architecture: file {arch!r}, preset {preset['arch']!r}")
    if diff:
        raise CheckpointError(f"{path}: does not hold the architecture of preset {name!r}: " + "; ".join(diff))


# ---------------------------------------------------------------------------------------------
# Preprocessing: how each family's weights expect their images (WEIGHTS.md 1.3, 2.4, 3.2, 4, 5).
# ---------------------------------------------------------------------------------------------

# Hugging Face ViTImageProcessor: straight to 224x224, bilinear, no crop, [-1, 1].
HF_VIT = Preprocess(224, HALF, HALF, "bilinear", None)
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _side(size, path: Path) -> Optional[int]:
    """A processor size: an int, {"height", "width"} (square only) or {"shortest_edge"}."""
    if size is None or isinstance(size, int):
        return size
    if "shortest_edge" in size:
        return int(size["shortest_edge"])
    if size.get("height") != size.get("width"):
        raise CheckpointError(f"{path}: a non-square size {size}; tinyvit preprocesses to squares")
    return int(size["height"])


def preprocess_from_hf(proc: dict, path: Path) -> Preprocess:
    """Hugging Face preprocessor_config.json -> Preprocess. A square resize before the crop is
    read as a short-side resize: the same for square images, and the crop ratio is kept."""
    resample = proc.get("resample", 2)
    if resample not in _PIL_RESAMPLE:
        raise CheckpointError(
            f"{path}: resample={resample!r}; supported: {_PIL_RESAMPLE}. Pass name= to use a preset's preprocessing"
        )
    size = _side(proc.get("size"), path) if proc.get("do_resize", True) else None
    crop = _side(proc.get("crop_size"), path) if proc.get("do_center_crop", False) else None
    if proc.get("do_normalize", True):
        mean, std = proc.get("image_mean", HALF), proc.get("image_std", HALF)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if crop is not None:
        return Preprocess(crop, mean, std, _PIL_RESAMPLE[resample], size)
    return Preprocess(size or 224, mean, std, _PIL_RESAMPLE[resample], None)


def preprocess_from_timm(cfg: dict) -> Preprocess:
    """timm's pretrained_cfg: resize the short side to floor(size / crop_pct), centre-crop size."""
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    crop_pct = float(cfg.get("crop_pct", 0.875))
    # crop_mode 'squash' at crop_pct 1: straight to the square, no crop (as tinyvit.export writes it)
    squash = cfg.get("crop_mode") == "squash" and crop_pct == 1.0
    return Preprocess(
        size, cfg.get("mean", HALF), cfg.get("std", HALF), cfg.get("interpolation", "bicubic"),
        None if squash else math.floor(size / crop_pct),
    )


def choose_preprocess(ckpt: Checkpoint, config: dict, name: Optional[str]) -> Preprocess:
    if name is not None:
        pre = PRESETS[name]["preprocess"]
    elif ckpt.preprocessor is not None:
        where = ckpt.path.parent / "preprocessor_config.json"
        try:
            pre = preprocess_from_hf(ckpt.preprocessor, where)
        except CheckpointError:
            raise
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: {e}") from e
    elif isinstance((ckpt.config or {}).get("pretrained_cfg"), dict):
        try:
            pre = preprocess_from_timm(ckpt.config["pretrained_cfg"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{ckpt.path.parent / 'config.json'}: pretrained_cfg: {e}") from e
    elif ckpt.family == "google":
        pre = GOOGLE
    elif ckpt.family == "hf":
        pre = DEIT if config.get("distilled") else HF_VIT
    elif ckpt.family == "timm":
        # DeiT's release files are wrapped in {'model': ...}; timm's Google-derived ones are not.
        pre = DEIT if config.get("distilled") or ckpt.wrapper == "model" else GOOGLE
    else:  # torchvision ViT and ResNets (ResNet-50 V2's 232 comes with name="resnet50")
        pre = TORCHVISION
    native = config.get("image_size")
    if native is not None and native != pre.image_size:
        pre = pre.with_image_size(native)
    return pre


# ---------------------------------------------------------------------------------------------
# 4. Strict loading: every key and every shape checked before anything is copied.
# ---------------------------------------------------------------------------------------------


def _listing(title: str, items: list, limit: int = 20) -> str:
    if not items:
        return ""
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items[:limit]) + more


def load_strict(model: nn.Module, mapped: Mapped, path: Path, what: str) -> None:
    """Copy `mapped.state` into `model`, or raise one error listing every key that does not fit."""
    expected = model.state_dict()
    state = dict(mapped.state)
    missing, mismatched = [], []
    for k, ref in expected.items():
        if k not in state:
            if k.endswith("num_batches_tracked"):  # optional in old ResNet files (WEIGHTS.md 5)
                state[k] = ref.clone()
            else:
                missing.append(f"{k} {_shape(ref)}")
            continue
        got = state[k].shape
        if k == "patch_embed.proj.weight" and ref.ndim == 2 and len(got) == 4:
            got = torch.Size([got[0], got[1] * got[2] * got[3]])  # the linear patch view reads the conv kernel
        if got != ref.shape:
            mismatched.append(f"{k} from {mapped.origin.get(k, k)!r}: file {_shape(state[k])}, model {_shape(ref)}")
    unexpected = mapped.unexpected + [
        f"{mapped.origin[k]} {_shape(t)}" + (f" (as {k})" if mapped.origin[k] != k else "")
        for k, t in state.items() if k not in expected
    ]
    if missing or unexpected or mismatched or mapped.problems:
        raise CheckpointError(
            f"{path}: {what} that does not fit the model; nothing was loaded."
            + _listing("missing: the model needs them, the file lacks them", missing)
            + _listing("unexpected: in the file, not used by the model", unexpected)
            + _listing("wrong shape", mismatched)
            + _listing("cannot convert", mapped.problems)
        )
    wrong_dtype, not_finite = _check_values(state, expected, mapped.origin)
    if wrong_dtype or not_finite:
        raise CheckpointError(
            f"{path}: {what} with values the model cannot use; nothing was loaded."
            + _listing("wrong dtype: load_state_dict would cast them silently", wrong_dtype, limit=5)
            + _listing("NaN or Inf values", not_finite, limit=5)
        )
    model.load_state_dict(state, strict=True)


def _check_values(state: dict, expected: dict, origin: dict) -> tuple[list, list]:
    """Tensors of the wrong kind of dtype, and floating tensors holding NaN/Inf.

    Keys and shapes can all fit while the values are unusable: load_state_dict casts int32, bool
    or complex tensors into float parameters without a word (int32 weights of a quantised export
    become whole numbers, complex ones lose their imaginary part), and one NaN makes every logit NaN.
    Integer buffers (BatchNorm's num_batches_tracked) must stay integers.
    """
    wrong_dtype, not_finite = [], []
    for k, ref in expected.items():
        t = state[k]
        name = f"{k}" + (f" (from {origin[k]!r})" if origin.get(k, k) != k else "")
        if ref.is_floating_point():
            if not t.is_floating_point():
                wrong_dtype.append(f"{name}: {t.dtype}, expected a floating-point tensor ({ref.dtype})")
            elif not torch.isfinite(t).all():
                bad = int((~torch.isfinite(t)).sum())
                not_finite.append(f"{name}: {bad} of {t.numel()} values")
        elif t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            wrong_dtype.append(f"{name}: {t.dtype}, expected an integer tensor ({ref.dtype})")
    return wrong_dtype, not_finite


# ---------------------------------------------------------------------------------------------
# 5. The entry point.
# ---------------------------------------------------------------------------------------------


def load_pretrained(
    source,
    *,
    num_classes: Optional[int] = None,
    image_size: Optional[int] = None,
    num_heads: Optional[int] = None,
    name: Optional[str] = None,
    **overrides,
) -> nn.Module:
    """Load a checkpoint of any supported family into a tinyvit model, in eval mode.

    source: a .npz, .pth/.pt/.bin or .safetensors file, or a directory in Hugging Face, timm hub
        or tinyvit layout (config.json + model.safetensors or pytorch_model.bin).
    num_classes: a new, randomly initialised head of this many classes (0: none) when it differs
        from the file's; a warning says the file's head was dropped.
    image_size: serve this resolution; the position embedding is resampled (bicubic).
    num_heads: for files that do not store it (all but Google's .npz); see resolve_num_heads.
    name: a preset the file must match; its preprocessing (and heads) are used.
    overrides: other config fields that do not change the weights (drop_path, dropout, kernels,
        norm_eps, act, pool, patch_embed, ...); a field that does is caught by the strict check.
    """
    if name is not None and name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    ckpt = read_checkpoint(source)
    what = FAMILIES[ckpt.family][0]

    if ckpt.family == "tinyvit":
        meta = ckpt.config
        if meta.get("version") != FORMAT_VERSION or not isinstance(meta.get("config"), dict) or "arch" not in meta:
            raise CheckpointError(f"{ckpt.path.parent / 'config.json'}: expected tinyvit format version "
                                  f"{FORMAT_VERSION} with 'arch' and 'config'")
        arch, config = meta["arch"], dict(meta["config"])
        if num_heads is not None and arch == "vit" and num_heads != config.get("num_heads"):
            raise CheckpointError(f"{ckpt.path}: saved with num_heads={config.get('num_heads')}, not {num_heads}")
        mapped = Mapped(state=dict(ckpt.tensors), origin={k: k for k in ckpt.tensors})
        if name is not None:
            preprocess = choose_preprocess(ckpt, config, name)
        else:
            try:
                preprocess = Preprocess.from_dict(meta["preprocess"]) if meta.get("preprocess") else None
            except (TypeError, ValueError, AttributeError) as e:
                raise CheckpointError(f"{ckpt.path.parent / 'config.json'}: preprocess.{e}") from e
    else:
        registers = [k for k in ckpt.tensors if k.endswith(("reg_token", "register_tokens"))]
        if registers:  # timm's *_reg* models, Hugging Face's Dinov2WithRegisters
            k = registers[0]
            raise CheckpointError(
                f"{ckpt.path}: unsupported: register tokens ({k!r} {_shape(ckpt.tensors[k])}; Darcet et al. 2024, "
                f"\"Vision Transformers Need Registers\"); tinyvit's ViT has only class and distillation tokens"
            )
        mapped = map_keys(ckpt)
        if ckpt.family == "resnet":
            arch, config = "resnet", infer_resnet_config(mapped.state, ckpt.path)
        else:
            arch, config = "vit", infer_vit_config(mapped.state, ckpt.path)
            config["num_heads"] = resolve_num_heads(ckpt, config["dim"], num_heads, name)
            if ckpt.family == "hf":
                config.update(_hf_numerics(ckpt))
            elif ckpt.family == "timm":
                config.update(_timm_numerics(ckpt))
        preprocess = choose_preprocess(ckpt, config, name)
    if name is not None:
        given = dict(overrides, **({"num_heads": num_heads} if num_heads is not None else {}))
        _check_preset(arch, config, name, ckpt.path, given)

    file_classes = config.get("num_classes", 0)
    config.update(overrides)
    try:
        model = build_model(arch, config, preprocess)
    except (TypeError, ValueError) as e:
        if ckpt.family == "tinyvit":  # the architecture comes from config.json: name it
            raise CheckpointError(f"{ckpt.path.parent / 'config.json'}: config: {e}") from e
        raise CheckpointError(f"{ckpt.path}: cannot build the model this file describes ({e})") from e
    load_strict(model, mapped, ckpt.path, what)

    head = mapped.state.get("head.weight", mapped.state.get("fc.weight"))
    if num_classes is not None and num_classes != file_classes:
        model.reset_classifier(num_classes)
        had = f"the file's head of {file_classes} classes was dropped" if file_classes else "the file has no head"
        warnings.warn(f"{ckpt.path}: {had}; a new, untrained head of {num_classes} classes replaces it", stacklevel=2)
    elif head is not None and not head.any():
        warnings.warn(
            f"{ckpt.path}: the classification head is all zeros (Google's in21k files zeroed it); "
            f"use the model as a backbone or give it a new head with num_classes=...", stacklevel=2,
        )
    if image_size is not None:
        if arch == "vit":
            model.set_image_size(image_size)
        elif model.preprocess is not None:  # a ResNet takes any size: only the preprocessing changes
            model.preprocess = model.preprocess.with_image_size(image_size)
    return model.eval()
