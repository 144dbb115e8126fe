"""Converters: official pretrained weights of every family into tinyvit, strictly.

`load_pretrained(source)` reads one checkpoint and returns a model in eval mode with the
preprocessing its weights expect. It goes through these steps, the first two in their own modules:

1. read the tensors safely (tinyvit/checkpoint.py): no checkpoint may run code (pickles via
   `weights_only=True`, npz with `allow_pickle=False`, safetensors). The format is sniffed from the
   bytes, not the extension, and the family is recognised from a few key names;
2. rename every key through its family's table to tinyvit's names, which are timm's, transforming
   layouts on the way (JAX kernels, split q/k/v). tinyvit/keymaps.py holds the tables and lists the
   families (Google .npz, Hugging Face, timm/DeiT, torchvision ViT and ResNet, tinyvit's own
   directories) with the source file that defines each layout;
3. infer the architecture from the shapes (width, depth, patch, grid, MLP, prefix tokens, heads),
   and the preprocessing from the files beside the weights or the family's defaults;
4. build the model and check every key and shape before loading anything; one error lists all
   missing, unexpected and wrong-shaped keys, naming the file;
5. optionally give it a new head (`num_classes`) or another resolution (`image_size`).

Steps 3 to 5 are this file, in that order. `save_pretrained` (tinyvit/checkpoint.py) writes the
tinyvit directory that step 1 reads back.

Numerics. Every PyTorch port computes exact (erf) GELU with LayerNorm eps 1e-6, and so does tinyvit
by default, also for the Google files (trained with tanh GELU; the ports differ from JAX by ~1e-3).
A Hugging Face directory is the exception: its config.json says how transformers computes that
model (`layer_norm_eps`, usually 1e-12, and `hidden_act`), and tinyvit honours it, so the logits
are transformers' own. The weights were trained at eps 1e-6 (flax's LayerNorm default); the difference is
~4e-4 in the logits. Pass `norm_eps=1e-6` to load_pretrained to reproduce timm instead.
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from tinyvit.checkpoint import FORMAT_VERSION, Checkpoint, CheckpointError, read_checkpoint
from tinyvit.errors import TinyvitError
from tinyvit.keymaps import FAMILIES, Mapped, map_keys, shape_of
from tinyvit.presets import DEIT, GOOGLE, PRESETS, TORCHVISION, build_model
from tinyvit.preprocess import HALF, PIL_RESAMPLE, Preprocess
from tinyvit.vit import POOLS

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
            f"{path}: patch embedding of shape {shape_of(w)}; expected a square conv kernel [d, c, p, p]"
        )
    dim, in_channels, patch = w.shape[0], w.shape[1], w.shape[2]
    prefix = int("cls_token" in state) + int("dist_token" in state)
    pos = state["pos_embed"]
    if pos.ndim != 3:
        raise CheckpointError(f"{path}: position embedding of shape {shape_of(pos)}; expected [1, tokens, d]")
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


def infer_fdvit_config(state: dict, path: Path, heads=None, name: Optional[str] = None) -> dict:
    """FDViTConfig fields from the shapes of a state dict in tinyvit names (tinyvit/fdvit.py).

    Two things the shapes cannot tell: the heads per stage (from `heads`, the preset `name`, or the
    preset of the same widths and depths), and the patch conv's stride, taken as half its kernel as in
    every official preset (16/8, 14/7); the image size follows from the position map's side W0."""
    _need(state, ["patch_embed.conv.weight", "pos_embed", "stages.0.blocks.0.norm1.weight"], path, "FDViT architecture")
    w, pos = state["patch_embed.conv.weight"], state["pos_embed"]
    if w.ndim != 4 or w.shape[2] != w.shape[3] or pos.ndim != 4 or pos.shape[2] != pos.shape[3]:
        raise CheckpointError(f"{path}: patch conv {shape_of(w)} and position map {shape_of(pos)}; expected "
                              f"[C0, c, p, p] and [1, C0, W0, W0]")
    patch, stride = w.shape[2], max(1, w.shape[2] // 2)
    n = _max_index(state, r"stages\.(\d+)\.blocks\.") + 1
    widths = [state[f"stages.{s}.blocks.0.norm1.weight"].shape[0] for s in range(n)]
    depth = [(_max_index(state, rf"stages\.{s}\.blocks\.(\d+)\.") or 0) + 1 for s in range(n)]
    if heads is None and name is not None and PRESETS[name]["arch"] == "fdvit":
        heads = PRESETS[name]["config"]["heads"]
    if heads is None:
        same = [p["config"]["heads"] for p in PRESETS.values() if p["arch"] == "fdvit"
                and list(p["config"]["depth"]) == depth
                and [d * h for d, h in zip(p["config"]["base_dims"], p["config"]["heads"])] == widths]
        if not same:
            raise CheckpointError(f"{path}: an FDViT of widths {widths} and depths {depth}, which no preset has; the file "
                                  f"does not store the heads per stage: pass num_heads=[...] (one per stage)")
        heads = same[0]
    heads = list(heads)
    if len(heads) != n or any(c % h for c, h in zip(widths, heads)):
        raise CheckpointError(f"{path}: num_heads={heads} does not divide the stage widths {widths}")
    head = state.get("head.weight")
    return dict(
        image_size=(pos.shape[-1] - 1) * stride + patch, patch_size=patch, stride=stride, in_channels=w.shape[1],
        num_classes=head.shape[0] if head is not None else 0,
        base_dims=[c // h for c, h in zip(widths, heads)], heads=heads, depth=depth,
        mlp_ratio=state["stages.0.blocks.0.mlp.fc1.weight"].shape[0] / widths[0],
        decoders=any(".decoder." in k for k in state),
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
    model_args = cfg.get("model_args")
    for field, value in (("num_attention_heads", cfg.get("num_attention_heads")),
                         ("model_args.num_heads", model_args.get("num_heads") if isinstance(model_args, dict) else None)):
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CheckpointError(f"{ckpt.path.parent / 'config.json'}: {field}={value!r}; expected a positive integer")
            return value
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
        eps = cfg["layer_norm_eps"]
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < math.inf:
            raise CheckpointError(f"{where}: layer_norm_eps={eps!r}; expected a positive number")
        out["norm_eps"] = float(eps)
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
        if not pool or pool not in POOLS:  # '' (unpooled tokens) would leave the file's head unread
            raise CheckpointError(f"{where}: global_pool={pool!r}; tinyvit supports 'token' and 'avg'")
        out["pool"] = POOLS[pool]
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


def check_config_fits(arch: str, config: dict, state: dict, where: Path) -> None:
    """A config.json's sizes against the tensors it describes, before the model is built.

    Building allocates what the config asks for; a crafted depth of 10**6 or an image size of 10**9
    would run out of memory before the strict key and shape check could say that the weights do not
    fit. So every field that sizes a tensor is compared with the tensor first (counts of blocks and
    stages, widths, the position grid, the head); `load_strict` still checks every key afterwards.
    """
    misfits = _MISFITS.get(arch)
    problems = misfits(config, state) if misfits is not None else []
    if problems:
        raise CheckpointError(f"{where}: the config does not describe these weights (nothing was built): "
                              + "; ".join(problems))


def _int_field(config: dict, name: str) -> Optional[int]:
    v = config.get(name)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _expect(problems: list, config: dict, field: str, want, what: str) -> None:
    if want is not None and config.get(field) != want:
        problems.append(f"{field}={config.get(field)!r}, but " + what.format(want))


def _vit_misfits(config: dict, state: dict) -> list[str]:
    problems = []
    blocks = _max_index(state, r"blocks\.(\d+)\.")
    _expect(problems, config, "depth", None if blocks is None else blocks + 1, "the weights hold {} blocks")
    w, pos = state.get("patch_embed.proj.weight"), state.get("pos_embed")
    if w is not None and w.ndim >= 2:
        _expect(problems, config, "dim", w.shape[0], "the patch embedding is {} wide")
        if w.ndim == 4 and config.get("patch_embed", "conv") == "conv":  # (a conv stem ends in a 1x1 conv)
            _expect(problems, config, "patch_size", w.shape[2], "the patch embedding's kernel is {} px")
            _expect(problems, config, "in_channels", w.shape[1], "the patch embedding reads {} channels")
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    _expect(problems, config, "mlp_dim", None if fc1 is None else fc1.shape[0], "the MLP is {} wide")
    head = state.get("head.weight")
    _expect(problems, config, "num_classes",
            0 if head is None and "head.bias" not in state else None if head is None else head.shape[0],
            "the head has {} classes")
    image, patch = _int_field(config, "image_size"), _int_field(config, "patch_size")
    if image and patch and image > 0 and patch > 0:
        grid = image // patch
        if pos is not None and pos.ndim == 3:
            prefix = int("cls_token" in state) + int("dist_token" in state)
            if grid * grid + prefix != pos.shape[1]:
                problems.append(f"image_size={image} (a grid of {grid}x{grid} patches of {patch} px), but the "
                                f"position embedding holds {pos.shape[1] - prefix} patch positions")
        elif grid * grid * (_int_field(config, "dim") or 1) > MAX_TABLE:  # a fixed sin-cos table, computed when built
            problems.append(f"image_size={image}: its sin-cos position table of {grid * grid:,} positions would not "
                            f"fit in memory")
    if _int_field(config, "token_learner_tokens"):
        learners = [t for k, t in state.items() if k.endswith("token_learner.mlp.fc2.weight")]
        _expect(problems, config, "token_learner_tokens", learners[0].shape[0] if learners else 0,
                "the weights' TokenLearner makes {} tokens")
    return problems


def _resnet_misfits(config: dict, state: dict) -> list[str]:
    problems = []
    layers = config.get("layers")
    found = [(_max_index(state, rf"layer{s}\.(\d+)\.") or 0) + 1 for s in range(1, 5)]
    if not isinstance(layers, (list, tuple)) or list(layers) != found:
        problems.append(f"layers={layers!r}, but the weights hold {found} blocks per stage")
    fc = state.get("fc.weight")
    _expect(problems, config, "num_classes", None if fc is None else fc.shape[0], "the head has {} classes")
    return problems


# Each architecture's checks of a config against its tensors; an FDViT is checked by the strict load alone.
_MISFITS = {"vit": _vit_misfits, "resnet": _resnet_misfits}


# A table the config makes and the weights do not hold (the sin-cos positions): more values than this,
# 8 GiB of fp32, is refused as too large for memory rather than left to the allocator.
MAX_TABLE = 2 ** 31


# ---------------------------------------------------------------------------------------------
# Preprocessing: how each family's weights expect their images (vit_jax input_pipeline.py, transformers'
# ViTImageProcessor, timm's default_cfgs, facebookresearch/deit datasets.py, torchvision's weight enums).
# ---------------------------------------------------------------------------------------------

# Hugging Face ViTImageProcessor: straight to 224x224, bilinear, no crop, [-1, 1].
HF_VIT = Preprocess(224, HALF, HALF, "bilinear", None)


def _side(size, path: Path, field: str = "size") -> Optional[int]:
    """A processor size: an int, {"height", "width"} (square only) or {"shortest_edge"}."""
    def pixels(v):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise CheckpointError(f"{path}: {field}={size!r}; expected a positive number of pixels, "
                                  f"{{'height': H, 'width': W}} or {{'shortest_edge': S}}")
        return v

    if size is None:
        return None
    if not isinstance(size, dict):
        return pixels(size)
    if "shortest_edge" in size:
        return pixels(size["shortest_edge"])
    if size.get("height") != size.get("width"):
        raise CheckpointError(f"{path}: a non-square {field} {size}; tinyvit preprocesses to squares")
    return pixels(size.get("height"))


def preprocess_from_hf(proc: dict, path: Path) -> Preprocess:
    """Hugging Face preprocessor_config.json -> Preprocess. A square resize before the crop is
    read as a short-side resize: the same for square images, and the crop ratio is kept."""
    resample = proc.get("resample", 2)
    if resample not in PIL_RESAMPLE:
        raise CheckpointError(
            f"{path}: resample={resample!r}; supported: {PIL_RESAMPLE}. Pass name= to use a preset's preprocessing"
        )
    size = _side(proc.get("size"), path) if proc.get("do_resize", True) else None
    crop = _side(proc.get("crop_size"), path, "crop_size") if proc.get("do_center_crop", False) else None
    if proc.get("do_normalize", True):
        mean, std = proc.get("image_mean", HALF), proc.get("image_std", HALF)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if crop is not None:
        return Preprocess(crop, mean, std, PIL_RESAMPLE[resample], size)
    return Preprocess(size or 224, mean, std, PIL_RESAMPLE[resample], None)


def preprocess_from_timm(cfg: dict) -> Preprocess:
    """timm's pretrained_cfg: resize the short side to floor(size / crop_pct), centre-crop size."""
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    crop_pct = cfg.get("crop_pct", 0.875)
    if not isinstance(crop_pct, (int, float)) or isinstance(crop_pct, bool) or not 0 < crop_pct < math.inf:
        raise ValueError(f"crop_pct={crop_pct!r}; expected a positive fraction (timm resizes to size / crop_pct)")
    crop_pct = float(crop_pct)
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
        except (TypeError, ValueError, AttributeError, OverflowError) as e:
            raise CheckpointError(f"{where}: {e}") from e
    elif isinstance((ckpt.config or {}).get("pretrained_cfg"), dict):
        try:
            pre = preprocess_from_timm(ckpt.config["pretrained_cfg"])
        except (TypeError, ValueError, AttributeError, IndexError, KeyError, OverflowError) as e:
            raise CheckpointError(f"{ckpt.path.parent / 'config.json'}: pretrained_cfg.{e}") from e
    elif ckpt.family == "google":
        pre = GOOGLE
    elif ckpt.family == "hf":
        pre = DEIT if config.get("distilled") else HF_VIT
    elif ckpt.family == "timm":
        # DeiT's release files are wrapped in {'model': ...}; timm's Google-derived ones are not.
        pre = DEIT if config.get("distilled") or ckpt.wrapper == "model" else GOOGLE
    elif ckpt.family in ("fdvit", "fdvit_hf"):
        pre = DEIT  # FDViT's datasets.py evaluates as DeiT (tinyvit/presets.py)
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
            if k.endswith("num_batches_tracked"):  # optional in old ResNet files (torchvision's 2017 weights)
                state[k] = ref.clone()
            else:
                missing.append(f"{k} {shape_of(ref)}")
            continue
        got = state[k].shape
        if k == "patch_embed.proj.weight" and ref.ndim == 2 and len(got) == 4:
            got = torch.Size([got[0], got[1] * got[2] * got[3]])  # the linear patch view reads the conv kernel
        if got != ref.shape:
            mismatched.append(
                f"{k} from {mapped.origin.get(k, k)!r}: file {shape_of(state[k])}, model {shape_of(ref)}"
            )
    unexpected = mapped.unexpected + [
        f"{mapped.origin[k]} {shape_of(t)}" + (f" (as {k})" if mapped.origin[k] != k else "")
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


def model_of_run_state(state: dict, path: Path, preprocess: str = "preprocess") -> nn.Module:
    """The model a run's checkpoint.pt holds (`checkpoint.read_run_state`), its config checked
    against its weights before it is built and its weights as load_pretrained checks them. It
    carries the state's `preprocess` (training's, to resume) or `eval_preprocess` (to serve)."""
    weights = state.get("model")
    if not isinstance(weights, dict) or not isinstance(state.get("model_config"), dict):
        raise CheckpointError(f"{path}: a tinyvit.finetune checkpoint without its model state")
    check_config_fits(state.get("arch"), state["model_config"], weights, path)
    try:
        model = build_model(state["arch"], state["model_config"], Preprocess.from_dict(state[preprocess]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: model_config: {e}") from e
    load_strict(model, Mapped(state=dict(weights), origin={k: k for k in weights}), path, "a tinyvit.finetune checkpoint")
    return model


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
    num_heads: for files that do not store it (all but Google's .npz); see resolve_num_heads. For an
        FDViT, one per stage (by default its preset's).
    name: a preset the file must match; its preprocessing (and heads) are used.
    overrides: other config fields that do not change the weights (drop_path, dropout, kernels,
        norm_eps, act, pool, patch_embed, ...); a field that does is caught by the strict check.
    """
    if name is not None and name not in PRESETS:
        raise TinyvitError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    ckpt = read_checkpoint(source)
    read = SOURCES.get(ckpt.family, _read_vit)
    arch, config, mapped, preprocess = read(ckpt, num_heads, name, overrides)
    if name is not None:
        given = dict(overrides, **({"num_heads": num_heads} if num_heads is not None else {}))
        _check_preset(arch, config, name, ckpt.path, given)

    file_classes = config.get("num_classes", 0)
    model = _build(ckpt, arch, {**config, **overrides}, preprocess)
    load_strict(model, mapped, ckpt.path, FAMILIES[ckpt.family][0])
    _new_head(model, mapped, ckpt.path, num_classes, file_classes)
    if image_size is not None:
        model.set_image_size(image_size)
    return model.eval()


# One reader per kind of source: (architecture, config, tensors in tinyvit's names, preprocessing).


def _read_tinyvit(ckpt: Checkpoint, num_heads: Optional[int], name: Optional[str], overrides: dict):
    """A tinyvit directory: config.json says everything; the tensors already carry tinyvit's names."""
    meta, where = ckpt.config, ckpt.path.parent / "config.json"
    if meta.get("version") != FORMAT_VERSION or not isinstance(meta.get("config"), dict) or "arch" not in meta:
        raise CheckpointError(f"{where}: expected tinyvit format version {FORMAT_VERSION} with 'arch' and 'config'")
    arch, config = meta["arch"], dict(meta["config"])
    if num_heads is not None and "num_heads" in config and num_heads != config["num_heads"]:  # (a ViT's)
        raise CheckpointError(f"{ckpt.path}: saved with num_heads={config['num_heads']}, not {num_heads}")
    mapped = Mapped(state=dict(ckpt.tensors), origin={k: k for k in ckpt.tensors})
    check_config_fits(arch, {**config, **overrides}, mapped.state, where)
    if name is not None:
        return arch, config, mapped, choose_preprocess(ckpt, config, name)
    try:
        preprocess = Preprocess.from_dict(meta["preprocess"]) if meta.get("preprocess") else None
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{where}: preprocess.{e}") from e
    return arch, config, mapped, preprocess


def _read_resnet(ckpt: Checkpoint, num_heads: Optional[int], name: Optional[str], overrides: dict):
    mapped = _official_tensors(ckpt)
    config = infer_resnet_config(mapped.state, ckpt.path)
    return "resnet", config, mapped, choose_preprocess(ckpt, config, name)


def _read_fdvit(ckpt: Checkpoint, num_heads, name: Optional[str], overrides: dict):
    mapped = _official_tensors(ckpt)
    config = infer_fdvit_config(mapped.state, ckpt.path, num_heads, name)
    return "fdvit", config, mapped, choose_preprocess(ckpt, config, name)


def _read_vit(ckpt: Checkpoint, num_heads: Optional[int], name: Optional[str], overrides: dict):
    """Google, Hugging Face, timm/DeiT and torchvision ViTs: the shapes, then what each family's
    config.json says that the shapes cannot (heads, numerics, pooling)."""
    mapped = _official_tensors(ckpt)
    config = infer_vit_config(mapped.state, ckpt.path)
    config["num_heads"] = resolve_num_heads(ckpt, config["dim"], num_heads, name)
    if ckpt.family == "hf":
        config.update(_hf_numerics(ckpt))
    elif ckpt.family == "timm":
        config.update(_timm_numerics(ckpt))
    return "vit", config, mapped, choose_preprocess(ckpt, config, name)


SOURCES = {"tinyvit": _read_tinyvit, "resnet": _read_resnet, "fdvit": _read_fdvit, "fdvit_hf": _read_fdvit}  # else a ViT


def _official_tensors(ckpt: Checkpoint) -> Mapped:
    """An official file's tensors renamed through its family's table (tinyvit/keymaps.py)."""
    registers = [k for k in ckpt.tensors if k.endswith(("reg_token", "register_tokens"))]
    if registers:  # timm's *_reg* models, Hugging Face's Dinov2WithRegisters
        k = registers[0]
        raise CheckpointError(
            f"{ckpt.path}: unsupported: register tokens ({k!r} {shape_of(ckpt.tensors[k])}; Darcet et al. 2024, "
            f"\"Vision Transformers Need Registers\"); tinyvit's ViT has only class and distillation tokens"
        )
    return map_keys(ckpt)


def _build(ckpt: Checkpoint, arch: str, config: dict, preprocess: Optional[Preprocess]) -> nn.Module:
    try:
        return build_model(arch, config, preprocess)
    except (TypeError, ValueError) as e:
        if ckpt.family == "tinyvit":  # the architecture comes from config.json: name it
            raise CheckpointError(f"{ckpt.path.parent / 'config.json'}: config: {e}") from e
        raise CheckpointError(f"{ckpt.path}: cannot build the model this file describes ({e})") from e


def _new_head(model: nn.Module, mapped: Mapped, path: Path, num_classes: Optional[int], file_classes: int) -> None:
    """A new head when num_classes differs from the file's; a warning either way when the head is not usable."""
    head = mapped.state.get("head.weight", mapped.state.get("fc.weight"))
    if num_classes is not None and num_classes != file_classes:
        model.reset_classifier(num_classes)
        had = f"the file's head of {file_classes} classes was dropped" if file_classes else "the file has no head"
        warnings.warn(f"{path}: {had}; a new, untrained head of {num_classes} classes replaces it", stacklevel=3)
    elif head is not None and not head.any():
        warnings.warn(
            f"{path}: the classification head is all zeros (Google's in21k files zeroed it); "
            f"use the model as a backbone or give it a new head with num_classes=...", stacklevel=3,
        )
