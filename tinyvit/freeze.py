"""Which parts of a model train: the unfreeze modes of the single-trainable-block study.

Malpure et al. 2021 ("Investigating Transfer Learning Capabilities of Vision Transformers and CNNs
by Fine-Tuning a Single Trainable Block", arXiv 2110.05270) fine-tune an ImageNet model on CIFAR-10
with only its last transformer block, or last convolutional stage, and a new classifier trainable.
`apply(model, mode)` sets that up:

    mode     ViT                                              ResNet
    head     norm + head (+ fc_norm, head_dist, pre_logits)   fc
    last     blocks[-1] + the head group                      layer4 + fc
    N        blocks[-N:] + the head group                     the last N of layer1..layer4 + fc
    all      everything, patch embedding and tokens too       everything, the stem too

so "head" is N = 0 and "last" is N = 1. An FDViT counts its five stages as a ResNet does (its
FD layer and decoder belong to the stage they shrink); its head group is the final norm + head.
ViT's final LayerNorm trains in every mode: it belongs to no block, and its per-feature scale and
shift are what adapts the frozen features to the new head most cheaply (the ResNet has no such
norm; its last BatchNorm sits inside layer4).

Freezing is where fine-tuning scripts most often go quietly wrong (kdexd/virtex#16: BatchNorm statistics
updated in a "frozen" backbone; CSCYQJ/MICCAI23-ProtoContra-SFDA#18: `module.requires_grad = False`):
- every frozen parameter gets `requires_grad_(False)` (setting a module's `requires_grad`
  attribute freezes nothing);
- the frozen modules stay in eval mode through `model.train()`: their `train` is replaced by one
  that keeps them in eval, so BatchNorm running statistics, dropout and stochastic depth stay frozen
  too, whoever calls `train()` (a DDP wrapper, a user);
- the optimizer sees only the trainable parameters (`param_groups`), with no weight decay on
  biases, norms and the class/distillation/position tokens.

The result is a `Split` of the model into a frozen prefix (images -> features, no autograd) and a
trainable suffix (features -> logits), with `split(split.prefix(x))` equal to `model(x)`. Training
runs the prefix without building a graph, wraps only the split in DistributedDataParallel, and can
replace the prefix by a cache of its outputs (tinyvit/cache.py).
"""
from __future__ import annotations

import types
from typing import Optional, Union

import torch
from torch import nn

from tinyvit.errors import TinyvitError

MODES = ("head", "last", "all")  # or a number N of final blocks / stages


def parse_mode(text: Union[str, int]) -> Union[str, int]:
    """'head', 'last', 'all' or a count N >= 0 of final blocks / stages."""
    if isinstance(text, int) or str(text).isdigit():
        return int(text)
    if text not in MODES:
        raise TinyvitError(f"unfreeze mode {text!r}; expected one of {', '.join(MODES)} or a number of final blocks")
    return text


def _prefix_modules(model: nn.Module, k: int) -> list[tuple[str, nn.Module]]:
    """The modules of the frozen prefix when the first k units are frozen."""
    return model.stem_modules() + model.units()[:k]


def _eval_only_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """`train()` of a frozen module: whatever is asked, it and its children stay in eval mode."""
    return nn.Module.train(self, False)


def _pin_eval(module: nn.Module) -> None:
    for m in module.modules():
        m.train = types.MethodType(_eval_only_train, m)  # an instance attribute shadows nn.Module.train
    module.eval()


def _unpin(model: nn.Module) -> None:
    for m in model.modules():
        m.__dict__.pop("train", None)


class Split(nn.Module):
    """A model cut after its first `frozen_depth` units (None: nothing frozen, the prefix is identity).

    prefix(images) -> features entering the first trainable unit (ViT: tokens [b, n, d] after
    embedding and the frozen blocks; ResNet: feature maps [b, C, H, W] after the stem and frozen
    stages), without autograd. forward(features) -> logits. The model is a registered submodule, so
    DistributedDataParallel over a Split sees every parameter and reduces the trainable ones.
    """

    def __init__(self, model: nn.Module, frozen_depth: Optional[int], mode: Union[str, int]):
        super().__init__()
        self.model = model
        self.frozen_depth = frozen_depth
        self.mode = mode

    @property
    def both_heads(self) -> bool:
        """DeiT distilled in training: both heads' logits (distillation needs them), else their mean.
        The model's own switch, timm's set_distilled_training."""
        return self.model.distilled_training

    @both_heads.setter
    def both_heads(self, enable: bool) -> None:
        self.model.set_distilled_training(enable)

    @torch.no_grad()
    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen_depth is None:
            return x  # nothing frozen: the "features" are the images
        return self.model.forward_prefix(x, self.frozen_depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen_depth is None:
            return self.model(x)
        # DeiT distilled: the mean of the two heads unless both_heads (the model's distilled_training)
        # is on; with no teacher, both heads learn the labels and predict by their mean, as DeiT
        # evaluates (facebookresearch/deit#82, the "both heads" option).
        return self.model.forward_suffix(x, self.frozen_depth)

    # -- reporting ----------------------------------------------------------------------------

    def trainable_groups(self) -> list[str]:
        m, k = self.model, self.frozen_depth
        if k is None:
            return ["everything"]
        return [name for name, _ in m.units()[k:] + m.head_modules()]

    def frozen_groups(self) -> list[str]:
        if self.frozen_depth is None:
            return []
        names = [name for name, _ in _prefix_modules(self.model, self.frozen_depth)]
        decay_free = getattr(self.model, "no_weight_decay", set)()  # timm's call: position tables, class tokens
        names += [t for t in sorted(decay_free) if isinstance(getattr(self.model, t, None), nn.Parameter)]
        return names

    def describe(self) -> str:
        trainable, total = count_parameters(self.model)
        frozen = self.frozen_groups()
        text = (
            f"unfreeze {self.mode}: {trainable:,} of {total:,} parameters train ({100 * trainable / total:.1f}%)\n"
            f"  trainable: {', '.join(self.trainable_groups())}\n"
            f"  frozen (eval mode): {', '.join(frozen) if frozen else 'nothing'}"
        )
        flops = self.describe_flops()
        return text + ("\n  " + flops if flops else "")

    def describe_flops(self) -> str:
        """The trained part's forward FLOPs per image, as run and as a full last block would cost; ''
        with nothing frozen, or for a model no formula counts in parts (tinyvit/flops.py SUFFIX_FLOPS)."""
        from tinyvit.flops import SUFFIX_FLOPS, format_flops

        count = SUFFIX_FLOPS.get(self.model.arch)
        if count is None or self.frozen_depth is None:
            return ""
        run = count(self.model, self.frozen_depth)
        full = count(self.model, self.frozen_depth, reduced_last_block=False)
        note = ""
        if run != full:
            note = f" (the last block for the head's tokens only; {format_flops(full)} with every token, {full / run:.1f}x)"
        return f"trained part: {format_flops(run)} forward per image{note}"


def apply(model: nn.Module, mode: Union[str, int]) -> Split:
    """Freeze `model` in place for `mode` ('head', 'last', 'all' or N) and return its Split."""
    mode = parse_mode(mode)
    if not callable(getattr(model, "units", None)):
        raise TypeError(f"expected a tinyvit VisionTransformer, ResNet or FDViT, got {type(model).__name__}")
    units = [unit for _, unit in model.units()]
    _unpin(model)  # a second apply() on the same model starts from scratch
    if mode == "all":
        model.requires_grad_(True)
        return Split(model, None, mode)
    n = {"head": 0, "last": 1}.get(mode, mode)
    if n > len(units):
        raise TinyvitError(f"--unfreeze {n}: the model has only {len(units)} {model.units_name} (use 'all' to train everything)")
    k = len(units) - n
    model.requires_grad_(False)
    for unit in units[k:]:
        unit.requires_grad_(True)
    for _, module in model.head_modules():
        module.requires_grad_(True)
    for _, module in _prefix_modules(model, k):
        _pin_eval(module)
    return Split(model, k, mode)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def param_groups(model: nn.Module, weight_decay: float, layer_decay: Optional[float] = None,
                 lr: Optional[float] = None, skip: Optional[set] = None) -> list[dict]:
    """AdamW groups over the trainable parameters only, for any model: weight decay on weight
    matrices and conv kernels; none on biases, norm scales and shifts (1-d) and the parameters the
    model names in `no_weight_decay()` (the tokens and positions, lucidrains/vit-pytorch#55; timm's
    call, which timm's create_optimizer_v2 reads too), or in `skip` when given.

    layer_decay: layer-wise learning-rate decay (BEiT, MAE's `util/lr_decay.py`), for every model
    that answers timm's `group_matcher()`, as timm's `param_groups_layer_decay` reads it: layer i of
    n gets lr x layer_decay^(n - 1 - i) (its group's `lr_scale`; `lr` x that when lr is given), the
    stem first, the unmatched head last at lr. One deviation from MAE's ViT table: timm's grouping
    puts the final norm with the last block (scale layer_decay), MAE's with the head (scale 1); with
    MAE's fine-tuning (fc_norm) the final norm is not there."""
    skip = getattr(model, "no_weight_decay", set)() if skip is None else skip
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise TinyvitError(f"--layer-decay {layer_decay}: expected a factor in (0, 1] (MAE: 0.65 for ViT-B, 0.75 for ViT-L)")
    layers = layer_ids(model) if layer_decay is not None else {}
    last = max(layers.values(), default=0) + 1 if layer_decay is not None else 0  # unmatched: the head
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name in skip
        layer = layers.get(name, last)
        group = groups.setdefault((layer, no_decay), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay,
            "name": (f"layer_{layer}_" if layer_decay is not None else "") + ("no_decay" if no_decay else "decay")})
        if layer_decay is not None:
            group["lr_scale"] = layer_decay ** (last - layer)
            if lr is not None:
                group["lr"] = lr * group["lr_scale"]
        group["params"].append(p)
    return sorted(groups.values(), key=lambda g: g["name"].endswith("no_decay")) if layer_decay is None else list(groups.values())


def layer_ids(model: nn.Module) -> dict[str, int]:
    """Parameter name -> layer index from the model's `group_matcher()` (timm's `group_with_matcher`
    with reverse=True): names sorted by (the matcher's entry, the numbers the regex captures); an entry
    whose suffix is (99999,) joins the group before it (timm's MATCH_PREV_GROUP); unmatched names
    get no index (the head, after every layer)."""
    import re

    matcher = getattr(model, "group_matcher", None)
    if matcher is None:
        raise TinyvitError(f"--layer-decay: {type(model).__name__} does not say its layers (timm's group_matcher)")
    compiled = []
    for ordinal, spec in enumerate(matcher(coarse=False).values()):
        for regex, suffix in (spec if isinstance(spec, (list, tuple)) else [(spec, None)]):
            compiled.append((re.compile(regex), ordinal, suffix))
    keys = {}
    for name, _ in model.named_parameters():
        for regex, ordinal, suffix in compiled:
            m = regex.match(name)
            if m:
                keys[name] = (float(ordinal), *(float(g) for g in m.groups() if g is not None), *(suffix or ()))
                break
    ids, layer = {}, -1
    for key in sorted(set(keys.values())):
        if layer < 0 or key[-1] != 99999:
            layer += 1
        ids.update({n: layer for n, k in keys.items() if k == key})
    return ids
