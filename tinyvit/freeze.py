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

from tinyvit.fdvit import FDViT
from tinyvit.resnet import ResNet
from tinyvit.vit import VisionTransformer

MODES = ("head", "last", "all")  # or a number N of final blocks / stages


def parse_mode(text: Union[str, int]) -> Union[str, int]:
    """'head', 'last', 'all' or a count N >= 0 of final blocks / stages."""
    if isinstance(text, int) or str(text).isdigit():
        return int(text)
    if text not in MODES:
        raise ValueError(f"unfreeze mode {text!r}; expected one of {', '.join(MODES)} or a number of final blocks")
    return text


def _units(model: nn.Module) -> list[nn.Module]:
    """The repeated units a mode counts: ViT blocks, ResNet and FDViT stages."""
    if isinstance(model, VisionTransformer):
        return list(model.blocks)
    if isinstance(model, (ResNet, FDViT)):
        return list(model.stages)
    raise TypeError(f"expected a tinyvit VisionTransformer, ResNet or FDViT, got {type(model).__name__}")


def _head_group(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """What trains in every mode: the classifier, and for ViT the final norm and optional extras."""
    if isinstance(model, ResNet):
        return [("fc", model.fc)]
    group = [("norm", model.norm)]
    for name in ("fc_norm", "pre_logits", "head", "head_dist"):
        if getattr(model, name, None) is not None:
            group.append((name, getattr(model, name)))
    return group


def _prefix_modules(model: nn.Module, k: int) -> list[tuple[str, nn.Module]]:
    """The modules of the frozen prefix when the first k units are frozen."""
    if isinstance(model, VisionTransformer):
        stem = [("patch_embed", model.patch_embed), ("pos_drop", model.pos_drop)]
        return stem + [(f"blocks.{i}", model.blocks[i]) for i in range(k)]
    if isinstance(model, FDViT):  # a stage ends with its FD layer (and decoder): they freeze with it
        stem = [("patch_embed", model.patch_embed), ("pos_drop", model.pos_drop)]
        return stem + [(f"stages.{i}", model.stages[i]) for i in range(k)]
    stem = [(n, getattr(model, n)) for n in ("conv1", "bn1", "relu", "maxpool")]
    return stem + [(f"layer{i + 1}", model.stages[i]) for i in range(k)]


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
        return getattr(self.model, "distilled_training", False)

    @both_heads.setter
    def both_heads(self, enable: bool) -> None:
        if hasattr(self.model, "set_distilled_training"):
            self.model.set_distilled_training(enable)

    @property
    def is_vit(self) -> bool:
        return isinstance(self.model, VisionTransformer)

    @torch.no_grad()
    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        k, m = self.frozen_depth, self.model
        if k is None:
            return x  # nothing frozen: the "features" are the images
        if self.is_vit:
            x = m.embed(x)  # [b, n, d]
            if k == len(m.blocks) and m.head_tokens is not None:
                # --unfreeze head: every block is frozen and only the class (and distillation) token
                # of the last one is read, so that block runs for them alone: [b, head_tokens, d].
                return m.run_last_block(m.run_blocks(x, 0, k - 1), m.head_tokens)
            return m.run_blocks(x, 0, k)
        x = m.stem(x)  # [b, 64, H/4, W/4]
        for stage in m.stages[:k]:
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, m = self.frozen_depth, self.model
        if k is None:
            out = m(x)
        elif self.is_vit:
            out = m.forward_head(m.forward_from(x, k))  # the last block for the head's tokens only
        else:
            for stage in m.stages[k:]:
                x = stage(x)
            out = m.forward_head(x)
        # DeiT distilled: the mean of the two heads unless both_heads (the model's distilled_training)
        # is on; with no teacher, both heads learn the labels and predict by their mean, as DeiT
        # evaluates (facebookresearch/deit#82, the "both heads" option).
        return out

    # -- reporting ----------------------------------------------------------------------------

    def trainable_groups(self) -> list[str]:
        m, k = self.model, self.frozen_depth
        if k is None:
            return ["everything"]
        units = _prefix_modules(m, len(_units(m)))[len(_prefix_modules(m, 0)):]  # (name, unit) of every unit
        names = [name for name, _ in units[k:]]
        return names + [name for name, _ in _head_group(m)]

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
        if self.is_vit and self.frozen_depth is not None:
            text += "\n  " + self.describe_flops()
        return text

    def describe_flops(self) -> str:
        """The trained part's forward FLOPs per image (ViT), as run and as a full last block would cost."""
        from tinyvit.flops import format_flops, suffix_flops

        run = suffix_flops(self.model, self.frozen_depth)
        full = suffix_flops(self.model, self.frozen_depth, reduced_last_block=False)
        note = ""
        if run != full:
            note = f" (the last block for the head's tokens only; {format_flops(full)} with every token, {full / run:.1f}x)"
        return f"trained part: {format_flops(run)} forward per image{note}"


def apply(model: nn.Module, mode: Union[str, int]) -> Split:
    """Freeze `model` in place for `mode` ('head', 'last', 'all' or N) and return its Split."""
    mode = parse_mode(mode)
    units = _units(model)
    _unpin(model)  # a second apply() on the same model starts from scratch
    if mode == "all":
        model.requires_grad_(True)
        return Split(model, None, mode)
    n = {"head": 0, "last": 1}.get(mode, mode)
    kind = "blocks" if isinstance(model, VisionTransformer) else "stages"
    if n > len(units):
        raise ValueError(f"--unfreeze {n}: the model has only {len(units)} {kind} (use 'all' to train everything)")
    k = len(units) - n
    model.requires_grad_(False)
    for unit in units[k:]:
        unit.requires_grad_(True)
    for _, module in _head_group(model):
        module.requires_grad_(True)
    for _, module in _prefix_modules(model, k):
        _pin_eval(module)
    return Split(model, k, mode)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups over the trainable parameters only: weight decay on weight matrices and conv
    kernels; none on biases, norm scales and shifts (1-d) and the tokens (lucidrains/vit-pytorch#55,
    the model's `no_weight_decay()`, timm's call, which timm's create_optimizer_v2 reads too)."""
    skip = getattr(model, "no_weight_decay", set)()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    return [g for g in groups if g["params"]]
