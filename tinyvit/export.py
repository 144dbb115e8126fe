"""Export: a tinyvit model out to the libraries models are served with, Hugging Face transformers
and timm, each as a folder in that library's own layout, which it loads unaided.

    python -m tinyvit.export runs/vit_cifar10 --to hf   --out export/vit_cifar10-hf
    python -m tinyvit.export runs/vit_cifar10 --to timm --out export/vit_cifar10-timm

or from Python `export(source, "hf", out)`, `export_hf(model, out, classes)`, `export_timm(...)`.
The source is a fine-tuning run directory (its classes.json names the labels; its checkpoint.pt
serves when the run did not get to write the model) or anything `tinyvit.load_pretrained` reads.
A file inside a run directory stands for the run. A run's files are checked as the loaders check
them (the manifest's SHA-256, NaN and non-float weights), and the preprocessing written is the one
the run evaluates with. The folder is written beside --out under a hidden name and renamed to
--out at the end, so a killed export never leaves a folder that loads.

The two layouts (transformers' `models/vit/modeling_vit.py` and `convert_vit_timm_to_pytorch.py`; timm's
`vision_transformer.py` and `_hub.py` `push_to_hf_hub`):

    hf    config.json              transformers' ViTConfig (DeiTConfig for a distilled DeiT): widths,
                                   LayerNorm eps, hidden_act, image and patch size, id2label/label2id
          model.safetensors        the classic names the hub stores (vit.encoder.layer.N.attention.
                                   attention.query.weight, ...): q, k and v as three Linear layers
          preprocessor_config.json the image processor: resize (and centre crop), mean/std, rescale
                                   1/255, resampling as a PIL integer
    timm  config.json              timm's hub config: architecture, model_args, pretrained_cfg (the
                                   preprocessing), label_names; timm.create_model("local-dir:OUT")
          model.safetensors        timm's names, which are tinyvit's
          README.md                the timm calls that load it, by folder and by name

The key names are not written out a second time: the tables in tinyvit/keymaps.py that read these
formats run backwards here (`invert`). Each tinyvit key is matched against the tinyvit side of the
table; the row that produces it names the key to write, and a fused qkv is cut back into its q, k
and v thirds. Reading the export back gives the same keys and tensors (tests/test_export.py).

What a target cannot represent is refused, one line naming the config field: fixed sin-cos positions
(both store learned ones), the small-data designs (Shifted Patch Tokenization, the conv stem, Locality
Self-Attention: tinyvit/locality.py), the in21k pre-logits layer and TokenLearner (neither has them), pooling
other than the class token for transformers (its classifier reads the normalised h[:, 0]), a
LayerNorm eps other than 1e-6 for timm (its ViT hard-codes it), and any config field this module does
not know. Training-only settings (dropout, stochastic depth, the kernels) do not change the logits
and are left out of timm's model_args.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Optional

from einops import rearrange
from torch import nn

from tinyvit import rundir
from tinyvit.atomic import write_atomic
from tinyvit.checkpoint import CheckpointError, NotRunState, read_run_state
from tinyvit.errors import MissingFileError, TinyvitError
from tinyvit.keymaps import HUGGING_FACE, RESNET, TIMM, compile_pattern, same
from tinyvit.presets import PRESETS
from tinyvit.preprocess import PIL_RESAMPLE, Preprocess
from tinyvit.vit import ViTConfig, VisionTransformer

TARGETS = ("hf", "timm")


class ExportError(TinyvitError):
    """A model the target format cannot represent, or an output folder that is not free."""


# ---------------------------------------------------------------------------------------------
# Key tables, run backwards.
# ---------------------------------------------------------------------------------------------


def invert(table: list, state: dict) -> dict:
    """tinyvit key -> the key a reading table maps from, for every tensor of `state`.

    Only renaming rows (transform `same`) run backwards; the first row whose tinyvit side matches
    wins, so a table lists the spelling to write first. A target ending in "#{qkv}" is one third
    of the fused qkv rows [q; k; v]: the tensor is split and written as query, key and value.
    """
    rows = []
    for source, target, transform in table:
        if transform is not same:
            raise ValueError(f"row {source!r} -> {target!r} transforms the tensor; it cannot run backwards")
        fused = target.endswith("#{qkv}")
        rows.append((compile_pattern(target.removesuffix("#{qkv}")), source, fused))
    out = {}
    for key, t in state.items():
        match = next(((m, source, fused) for regex, source, fused in rows if (m := regex.fullmatch(key))), None)
        if match is None:
            raise ExportError(f"{key} {tuple(t.shape)}: the target format has no place for this tensor")
        m, source, fused = match
        if fused:
            for part, third in zip(("query", "key", "value"), t.chunk(3, dim=0)):  # [3 d, ...] -> 3 x [d, ...]
                out[source.format(**m.groupdict(), qkv=part)] = third.clone()
        else:
            out[source.format(**m.groupdict())] = t
    return out


# Hugging Face: the classic spellings (what the hub stores and transformers' save_pretrained writes);
# the v5 in-memory names (`layers.N...`) and ViTModel's pooler are only read. The heads carry no
# `vit.` / `deit.` prefix.
_HF_HEADS = ("classifier.", "cls_classifier.", "distillation_classifier.")


def _hf_table(distilled: bool) -> list:
    skip = {"pooler.dense.{wb}", "classifier.{wb}" if distilled else "cls_classifier.{wb}"}
    return [row for row in HUGGING_FACE if not row[0].startswith("layers.") and row[0] not in skip]


def _plain_state(model: nn.Module) -> dict:
    """The state dict as contiguous fp32 CPU tensors (safetensors stores no views), the patch
    embedding as the conv kernel every format stores: `d (p1 p2 c) -> d c p1 p2` (vit.PatchEmbed)."""
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    w = state.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 2:
        p, c = model.cfg.patch_size, model.cfg.in_channels
        state["patch_embed.proj.weight"] = rearrange(w, "d (p1 p2 c) -> d c p1 p2", p1=p, p2=p, c=c).contiguous()
    return state


def hf_state_dict(model: VisionTransformer) -> dict:
    prefix = "deit." if model.cfg.distilled else "vit."
    state = invert(_hf_table(model.cfg.distilled), _plain_state(model))
    return {k if k.startswith(_HF_HEADS) else prefix + k: v for k, v in state.items()}


# timm's key table of each architecture timm has (by the model's `arch`).
TIMM_TABLES = {"vit": TIMM, "resnet": RESNET}


def timm_state_dict(model: nn.Module) -> dict:
    return invert(TIMM_TABLES[model.arch], _plain_state(model))


# ---------------------------------------------------------------------------------------------
# What each target can represent.
# ---------------------------------------------------------------------------------------------

# ViTConfig fields this module has read and maps (or refuses); any other field away from its default
# (added to the model later) is refused rather than exported with a forward the target does not run.
_KNOWN = {
    "image_size", "patch_size", "in_channels", "num_classes", "dim", "depth", "num_heads", "mlp_dim",
    "qkv_bias", "patch_embed", "pos_embed", "class_token", "pool", "fc_norm", "distilled", "pre_logits",
    "norm_eps", "act", "dropout", "attn_dropout", "drop_path", "kernels",
    "token_learner_at", "token_learner_tokens",  # where TokenLearner sits; tokens > 0 is refused below, once
    "lsa",  # Locality Self-Attention, refused below
}


def refusals(model: nn.Module, to: str) -> list[str]:
    """Every reason `to` cannot hold this model, one line each, naming the field."""
    refuse = _REFUSALS.get(getattr(model, "arch", None))
    if refuse is None:
        return [f"a {type(model).__name__}: neither transformers nor timm has this architecture (FDViT's Hugging "
                f"Face ports are custom code); keep the tinyvit directory (tinyvit.save_pretrained)"]
    return refuse(model, to)


def _resnet_refusals(model: nn.Module, to: str) -> list[str]:
    if to == "hf":
        return ["a ResNet: transformers' ResNetForImageClassification has another layout (stages, "
                "embedder, shortcut names); export it --to timm"]
    return []


def _vit_refusals(model: VisionTransformer, to: str) -> list[str]:
    cfg, lib = model.cfg, {"hf": "transformers' ViT", "timm": "timm's VisionTransformer"}[to]
    out = []
    defaults = ViTConfig()
    for f in fields(cfg):
        if f.name not in _KNOWN and getattr(cfg, f.name) != getattr(defaults, f.name, None):
            out.append(f"ViTConfig.{f.name}={getattr(cfg, f.name)!r}: tinyvit.export does not know how {lib} would run it")
    if getattr(cfg, "token_learner_tokens", 0):
        out.append(f"ViTConfig.token_learner_tokens={cfg.token_learner_tokens}: {lib} has no TokenLearner")
    if cfg.patch_embed in ("spt", "conv_stem"):
        out.append(f"ViTConfig.patch_embed={cfg.patch_embed!r}: {lib} embeds patches with one strided convolution")
    if cfg.lsa:
        out.append(f"ViTConfig.lsa=True: {lib}'s attention has no learnable temperature and no masked diagonal")
    if cfg.pos_embed == "sincos":
        out.append(f"ViTConfig.pos_embed='sincos': {lib} stores learned position embeddings only")
    if cfg.pre_logits:
        out.append(f"ViTConfig.pre_logits={cfg.pre_logits}: {lib} has no pre-logits layer before the head")
    if to == "hf":
        if cfg.pool != "cls":
            out.append(f"ViTConfig.pool={cfg.pool!r}: {lib} classifies the class token h[:, 0] only")
        elif cfg.fc_norm:
            out.append(f"ViTConfig.fc_norm=True: {lib} normalises every token before the classifier")
        if cfg.num_classes == 0:
            out.append("ViTConfig.num_classes=0: no head; ViTForImageClassification needs one")
    else:
        if abs(cfg.norm_eps - 1e-6) > 1e-12:
            out.append(f"ViTConfig.norm_eps={cfg.norm_eps:g}: {lib} uses LayerNorm eps 1e-6; load the model "
                       f"with norm_eps=1e-6 (the official weights were trained with it)")
        if int(cfg.dim * (cfg.mlp_dim / cfg.dim)) != cfg.mlp_dim:
            out.append(f"ViTConfig.mlp_dim={cfg.mlp_dim}: not int(dim * mlp_ratio) for any float ratio at dim={cfg.dim}")
    return out


_REFUSALS = {"vit": _vit_refusals, "resnet": _resnet_refusals}


def _check(model: nn.Module, to: str) -> None:
    problems = refusals(model, to)
    if problems:
        raise ExportError(f"cannot export to {to}: " + "; ".join(problems))
    if getattr(model, "preprocess", None) is None:
        raise ExportError("the model carries no preprocessing (resolution, mean/std); set model.preprocess")


# ---------------------------------------------------------------------------------------------
# Hugging Face.
# ---------------------------------------------------------------------------------------------

_HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}  # the inverse of convert._hf_numerics
_PIL = {name: code for code, name in PIL_RESAMPLE.items()}  # "bicubic" -> 3, as PIL numbers them


def _labels(classes: Optional[list], n: int) -> list[str]:
    if classes is None:
        return [f"LABEL_{i}" for i in range(n)]
    if len(classes) != n:
        raise ExportError(f"{len(classes)} class names for a head of {n} classes")
    if len(set(classes)) != len(classes):
        raise ExportError("the class names repeat; label2id needs each name once")
    return list(classes)


def hf_config(model: VisionTransformer, classes: Optional[list] = None) -> dict:
    cfg = model.cfg
    labels = _labels(classes, cfg.num_classes)
    arch, model_type = (
        ("DeiTForImageClassificationWithTeacher", "deit") if cfg.distilled else ("ViTForImageClassification", "vit")
    )
    return {
        "architectures": [arch],
        "model_type": model_type,
        "hidden_size": cfg.dim,
        "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.mlp_dim,
        "hidden_act": _HF_ACT[cfg.act],
        "layer_norm_eps": cfg.norm_eps,
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attn_dropout,
        "initializer_range": 0.02,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "num_channels": cfg.in_channels,
        "qkv_bias": cfg.qkv_bias,
        "encoder_stride": cfg.patch_size,
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
        "dtype": "float32",
    }


def hf_preprocessor(pre: Preprocess) -> dict:
    """The image processor that computes `pre.eval_transform()`. A plain resize is ViTImageProcessor;
    resize-then-crop is DeiTImageProcessor with the short side as `shortest_edge` (torchvision's rule)."""
    out = {
        "do_convert_rgb": True,  # tinyvit.data.load_image decodes to RGB
        "do_resize": True,
        "resample": _PIL[pre.interpolation],
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(pre.mean),
        "image_std": list(pre.std),
    }
    square = {"height": pre.image_size, "width": pre.image_size}
    if pre.resize_size is None:
        return {"image_processor_type": "ViTImageProcessor", **out, "size": square}
    return {
        "image_processor_type": "DeiTImageProcessor", **out,
        "size": {"shortest_edge": pre.resize_size}, "do_center_crop": True, "crop_size": square,
    }


def export_hf(model: nn.Module, out, classes: Optional[list] = None) -> Path:
    """Write `model` as a Hugging Face folder (see the module doc); returns the folder."""
    from safetensors.torch import save

    _check(model, "hf")
    state = hf_state_dict(model)
    config, pre = hf_config(model, classes), model.preprocess
    out = _write_folder(out, {
        "model.safetensors": save(state, metadata={"format": "pt"}),
        "config.json": _json(config),
        "preprocessor_config.json": _json(hf_preprocessor(pre)),
    })
    if pre.resize_size is not None:
        # torchvision's CenterCrop rounds the offset (half to even), transformers' floors it
        square = " (as every square image here is)" if (pre.resize_size - pre.image_size) % 4 == 3 else ""
        warnings.warn(
            f"preprocessing resizes the short side to {pre.resize_size} and crops {pre.image_size}: transformers "
            f"floors the crop offset where torchvision rounds it, so an image whose resized side exceeds "
            f"{pre.image_size} by 3 mod 4 pixels{square} is cropped one pixel apart", stacklevel=2,
        )
    return out


# ---------------------------------------------------------------------------------------------
# timm.
# ---------------------------------------------------------------------------------------------

_RESNETS = {("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
            ("bottleneck", (3, 4, 6, 3)): "resnet50"}


def timm_model_args(model: nn.Module) -> tuple[str, dict]:
    """timm's model name and the keyword arguments that make its model this one.

    The name is the tinyvit preset the architecture matches (presets carry timm's names), else a
    base of the same class (VisionTransformer, VisionTransformerDistilled, ResNet), the arguments
    spelling out every size: timm's entry points let keyword arguments override their own.
    """
    return _TIMM_ARGS[model.arch](model)


def _timm_resnet_args(model: nn.Module) -> tuple[str, dict]:
    cfg = model.cfg
    name = _RESNETS.get((cfg.block, tuple(cfg.layers)))
    args = {} if name else {"layers": list(cfg.layers)}
    if cfg.in_channels != 3:
        args["in_chans"] = cfg.in_channels
    return name or ("resnet18" if cfg.block == "basic" else "resnet50"), args


def _timm_vit_args(model: VisionTransformer) -> tuple[str, dict]:
    cfg = model.cfg
    shape = dict(dim=cfg.dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim, patch_size=cfg.patch_size)
    names = [n for n, p in PRESETS.items() if p["arch"] == "vit"
             and {k: p["config"].get(k) for k in shape} == shape and p["config"].get("distilled", False) == cfg.distilled]
    base = "deit_base_distilled_patch16_224" if cfg.distilled else "vit_base_patch16_224"
    args = dict(
        img_size=cfg.image_size, patch_size=cfg.patch_size, in_chans=cfg.in_channels, embed_dim=cfg.dim,
        depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_dim / cfg.dim, qkv_bias=cfg.qkv_bias,
        class_token=cfg.class_token, global_pool=model.global_pool, fc_norm=cfg.fc_norm,
    )
    if cfg.act == "gelu_tanh":
        args["act_layer"] = "gelu_tanh"
    return (names[0] if names else base), args


_TIMM_ARGS = {"vit": _timm_vit_args, "resnet": _timm_resnet_args}


def timm_config(model: nn.Module, classes: Optional[list] = None) -> dict:
    """timm's hub config.json (the layout `timm.models.push_to_hf_hub` writes)."""
    name, args = timm_model_args(model)
    n = model.cfg.num_classes
    try:  # the model's own pretrained_cfg (tinyvit/vit.py, tinyvit/resnet.py): one implementation
        cfg = model.pretrained_cfg
    except ValueError as e:
        raise ExportError(str(e)) from None
    keys = ("input_size", "fixed_input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std",
            "num_classes", "first_conv", "classifier")
    pretrained_cfg = {k: list(cfg[k]) if isinstance(cfg[k], tuple) else cfg[k] for k in keys}
    config = {
        "architecture": name,
        "num_classes": n,
        "num_features": model.num_features,
        "global_pool": args.get("global_pool", "avg"),
        "model_args": args,
        "pretrained_cfg": pretrained_cfg,
    }
    if classes is not None:
        config["label_names"] = _labels(classes, n)
    return config


def timm_calls(config: dict, out: Path) -> str:
    """The two timm calls that load the export: by folder, and by name with the weights file."""
    overlay = {k: config["pretrained_cfg"][k] for k in ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")}
    kwargs = "".join(f", {k}={v!r}" for k, v in config["model_args"].items())
    return (
        f"import timm\n"
        f"model = timm.create_model({'local-dir:' + str(out)!r}, pretrained=True)\n"
        f"# or by name, with the weights file (and the preprocessing, for timm.data.resolve_data_config):\n"
        f"model = timm.create_model({config['architecture']!r}, pretrained=True, num_classes={config['num_classes']}{kwargs},\n"
        f"                          pretrained_cfg_overlay=dict(file={str(out / 'model.safetensors')!r}, "
        f"num_classes={config['num_classes']}, **{overlay!r}))\n"
    )


def export_timm(model: nn.Module, out, classes: Optional[list] = None) -> Path:
    """Write `model` as a timm folder (see the module doc); returns the folder."""
    from safetensors.torch import save

    _check(model, "timm")
    state, config = timm_state_dict(model), timm_config(model, classes)
    final = Path(out)
    readme = f"# {final.name}\n\nExported by `tinyvit.export`. Load it with timm:\n\n```python\n{timm_calls(config, final)}```\n"
    return _write_folder(final, {
        "model.safetensors": save(state, metadata={"format": "pt"}),
        "config.json": _json(config),
        "README.md": readme.encode(),
    })


# ---------------------------------------------------------------------------------------------
# Sources, files and the entry points.
# ---------------------------------------------------------------------------------------------


def _free_folder(out) -> Path:
    """The output folder, which must not exist or be empty; one holding anything is the user's."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise ExportError(f"--out {out}: exists and is not an empty folder; choose a new one (nothing is overwritten)")
    return out


def _write_folder(out, files: dict) -> Path:
    """Write `files` (name -> bytes) into a staging folder beside `out`, then rename it to `out` in
    one step: a kill midway leaves only the hidden staging folder, never an `out` that holds the
    weights without the config that says how to preprocess for them."""
    out = _free_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tinyvit-export-"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes 0700; give what mkdir would have given
        for name, data in files.items():
            write_atomic(stage / name, lambda f, data=data: f.write(data))
        _free_folder(out)  # still free: nothing appeared there meanwhile
        os.rename(stage, out)  # an empty `out` is replaced; a non-empty one fails, untouched
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


def _json(obj) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def _finetune_checkpoint(path: Path) -> Optional[dict]:
    """The state of a run's checkpoint.pt (tinyvit/trainer.py), else None: another file is left to
    load_pretrained, which says what it is. Export reads only the model, which every version holds."""
    if path.suffix not in (".pt", ".pth"):
        return None
    try:
        return read_run_state(path, version=None)
    except NotRunState:
        return None
    except (rundir.ChecksumError, rundir.RunDirError) as e:
        raise CheckpointError(str(e)) from None


def _model_of_checkpoint(path: Path, state: dict) -> nn.Module:
    """The model of a run's checkpoint.pt, with the preprocessing the run evaluates with."""
    from tinyvit.convert import model_of_run_state

    if not isinstance(state.get("eval_preprocess"), dict):  # a checkpoint that does not record it
        raise ExportError(f"{path}: does not record the preprocessing its model is evaluated with (only the training "
                          f"one); let the run finish (python -m tinyvit.finetune --out {path.parent} --resume) and export "
                          f"the run directory")
    return model_of_run_state(state, path, "eval_preprocess").eval()


def load_source(source) -> tuple[nn.Module, Optional[list]]:
    """(model in eval mode, class names or None) from a run directory or any checkpoint.

    A file inside a run directory stands for that run: the run's model, classes and evaluation
    preprocessing, whichever of its files is named. A run that has not written its model yet
    (stopped by Ctrl-C or SIGTERM) is exported from its checkpoint.pt."""
    from tinyvit.convert import load_pretrained

    path = Path(source)
    if not path.exists():
        raise MissingFileError(f"{path}: no such run directory or checkpoint")
    try:
        path = rundir.run_of(path) or path  # a file of a run, verified, stands for its run
    except (rundir.ChecksumError, rundir.RunDirError) as e:
        raise CheckpointError(str(e)) from None
    if path.is_dir() and (path / rundir.MANIFEST).is_file() and not (path / "config.json").is_file():
        if not (path / "checkpoint.pt").is_file():
            raise ExportError(f"{path}: a run that has written neither its model nor a checkpoint yet; nothing to export")
        path = path / "checkpoint.pt"  # a run that has not written its model yet
    state = _finetune_checkpoint(path) if path.is_file() else None
    if state is not None:
        classes = state.get("classes")
        return _model_of_checkpoint(path, state), classes if isinstance(classes, list) else None
    model = load_pretrained(path)
    return model, rundir.read_classes(path) if path.is_dir() else None


def export(source, to: str, out, classes: Optional[list] = None) -> Path:
    """Export a run directory or checkpoint (`load_source`) to "hf" or "timm" in folder `out`.
    `classes` overrides the class names found with the source."""
    if to not in TARGETS:
        raise TinyvitError(f"to={to!r}; expected one of {TARGETS}")
    model, found = load_source(source)
    writer = export_hf if to == "hf" else export_timm
    return writer(model, out, classes if classes is not None else found)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tinyvit.export", description=__doc__.split("\n\n")[0])
    p.add_argument("source", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a tinyvit.finetune run directory, or any checkpoint tinyvit.load_pretrained reads")
    p.add_argument("--to", required=True, choices=TARGETS, help="hf: a transformers folder; timm: a timm folder")
    p.add_argument("--out", required=True, help="the folder to write (must not exist, or be empty)")
    a = p.parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = export(a.source, a.to, a.out)
    except TinyvitError as e:  # the user's mistake; anything else is a bug and keeps its traceback
        raise SystemExit(f"tinyvit.export: error: {e}") from None
    for w in caught:
        print(f"tinyvit.export: warning: {w.message}", file=sys.stderr)
    print(f"wrote {out}: " + ", ".join(sorted(f.name for f in out.iterdir())))
    if a.to == "hf":
        print(f'load it: transformers.pipeline("image-classification", model={str(out)!r})\n'
              f'(for the pixels tinyvit computes, resize with PIL: image_processor=transformers.AutoImageProcessor.'
              f'from_pretrained({str(out)!r}, backend="pil"); the default torchvision backend rounds +-1 grey level)')
    else:
        print("load it:\n" + timm_calls(json.loads((out / "config.json").read_text()), out), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
