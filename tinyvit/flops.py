"""Forward FLOPs per image, counted from shapes: a ViT by formula, any model by hooks.

Convention: one multiply-add is 2 FLOPs, and only matrix products count: linear layers, convolutions,
and attention's two products (scores q kᵀ and the weighted sum P v). Norms, softmax, GELU and the
residual additions are O(n · d) per block against O(n · d²) and left out (under 1% at ViT sizes).
So ViT-B/16 at 224 px is 35.1 GFLOPs here; timm, fvcore and the DeiT paper quote 17.6 "GFLOPs", which
are multiply-adds (halve the numbers here to compare). A training step costs about 3x the forward
(the backward computes two products per forward product) for the trained part.

One transformer block with n_q query tokens attending over n_k tokens (self-attention: n_q = n_k = n):

    q projection        2 · n_q · d²            attention scores   2 · n_q · n_k · d
    k, v projections    2 · 2 · n_k · d²        weighted sum       2 · n_q · n_k · d
    output projection   2 · n_q · d²            MLP                2 · 2 · n_q · d · mlp_dim

With class-token pooling the last block needs n_q = 1 (DeiT distilled: 2) against n_k = 197 at ViT-B/16:
the k, v projections stay, everything else shrinks by ~197x, and the block costs ~6x less
(tinyvit/vit.py, `VisionTransformer.forward_from`).

    block_flops(n_q, n_k, dim, mlp_dim)     one block
    vit_flops(cfg, image_size=None)         a whole ViT forward, as `forward` runs it (reduced last block,
                                            TokenLearner when it is on)
    token_learner_flops(n, d, s)            the TokenLearner module itself
    suffix_flops(model, start)              blocks[start:] + final norm + head: what `--unfreeze` trains
    model_flops(model, image_size=None)     any tinyvit ViT or FDViT (the formulas; FDViT's, both ways, is
                                            tinyvit/fdvit.py `fdvit_flops`) or other model (hooks on Conv2d
                                            and Linear, e.g. the ResNet): forward FLOPs per image
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch
from torch import nn

from tinyvit.token_learner import BOTTLENECK


def block_flops(n_q: int, n_k: int, dim: int, mlp_dim: int) -> int:
    """Matmul FLOPs of one pre-norm transformer block: n_q queries over n_k keys/values, width dim."""
    projections = 2 * n_q * dim * dim + 2 * 2 * n_k * dim * dim + 2 * n_q * dim * dim  # q; k, v; out
    attention = 2 * 2 * n_q * n_k * dim  # q kᵀ and P v, summed over heads (h · dh = dim)
    mlp = 2 * 2 * n_q * dim * mlp_dim
    return projections + attention + mlp


def _head_flops(cfg) -> int:
    """The classifier(s) on the pooled features: pre_logits, head, DeiT's head_dist."""
    flops = 0
    width = cfg.dim
    if cfg.pre_logits:
        flops += 2 * cfg.dim * cfg.pre_logits
        width = cfg.pre_logits
    if cfg.num_classes > 0:
        flops += 2 * width * cfg.num_classes
        if cfg.distilled:
            flops += 2 * cfg.dim * cfg.num_classes
    return flops


def _head_tokens(cfg) -> Optional[int]:
    """The queries the last block needs (tinyvit/vit.py `head_tokens`): the class (and distillation)
    token with class-token pooling, or None (every token) with mean pooling or a TokenLearner there."""
    if cfg.pool != "cls" or (cfg.token_learner_tokens and cfg.token_learner_block == cfg.depth - 1):
        return None
    return cfg.num_prefix_tokens


def token_learner_flops(n: int, d: int, s: int, bottleneck: int = BOTTLENECK) -> int:
    """TokenLearner v1.1 on n patch tokens (tinyvit/token_learner.py): MLP 2·n·(d·64 + 64·s), weighted
    sums 2·s·n·d."""
    return 2 * n * (d * bottleneck + bottleneck * s) + 2 * s * n * d


def _block_tokens(cfg, patches: int) -> list[int]:
    """Tokens entering each block: prefix + patches, and prefix + S after a TokenLearner."""
    p, s = cfg.num_prefix_tokens, cfg.token_learner_tokens
    return [p + (s if s and i > cfg.token_learner_block else patches) for i in range(cfg.depth)]


def patch_embed_flops(cfg, image_size: int) -> int:
    """The patch embedding: one matrix of (p p c) -> d per patch; Shifted Patch Tokenization reads 5
    shifted copies, (p p 5c) -> d; the conv stem its convolutions (tinyvit/locality.py)."""
    patches = (image_size // cfg.patch_size) ** 2
    kind = getattr(cfg, "patch_embed", "conv")
    if kind == "conv_stem":
        from tinyvit.locality import conv_stem_flops

        return conv_stem_flops(cfg.in_channels, cfg.dim, cfg.patch_size, image_size)
    copies = 5 if kind == "spt" else 1
    return 2 * patches * (cfg.patch_size**2 * cfg.in_channels * copies) * cfg.dim


def vit_flops(cfg, image_size: Optional[int] = None, reduced_last_block: bool = True) -> int:
    """Forward FLOPs per image of a ViT with config `cfg` (a ViTConfig) at `image_size` (default: cfg's).

    Blocks after a TokenLearner (cfg.token_learner_tokens > 0) run on prefix + S tokens, and the module's
    own cost is added. reduced_last_block: count the last block as `forward` runs it with class-token
    pooling (queries for the head's tokens only); False counts `forward_features` + `forward_head`.
    """
    size = cfg.image_size if image_size is None else image_size
    patches = (size // cfg.patch_size) ** 2
    tokens = _block_tokens(cfg, patches)
    flops = patch_embed_flops(cfg, size)
    flops += sum(block_flops(n, n, cfg.dim, cfg.mlp_dim) for n in tokens[:-1])
    m = _head_tokens(cfg) if reduced_last_block else None
    flops += block_flops(m or tokens[-1], tokens[-1], cfg.dim, cfg.mlp_dim)
    if cfg.token_learner_tokens:
        flops += token_learner_flops(patches, cfg.dim, cfg.token_learner_tokens)
    return flops + _head_flops(cfg)


def describe_token_learner(cfg) -> str:
    """One log line: what TokenLearner saves for this config (forward FLOPs per image)."""
    on, off = vit_flops(cfg), vit_flops(replace(cfg, token_learner_tokens=0))
    return (f"TokenLearner: {cfg.token_learner_tokens} learned tokens after block {cfg.token_learner_block} "
            f"(of {cfg.grid_size**2} patch tokens): {on / 1e6:,.1f} MFLOPs per image forward, "
            f"{off / 1e6:,.1f} without ({100 * (1 - on / off):.0f}% less)")


def suffix_flops(model: nn.Module, start: int, image_size: Optional[int] = None, reduced_last_block: bool = True) -> int:
    """Forward FLOPs per image of a tinyvit ViT from blocks[start] on: the blocks, the head(s).

    With `--unfreeze last` (start = depth - 1) that is the trained part of a step. start = depth (head
    only): just the classifier.
    """
    cfg = model.cfg
    size = cfg.image_size if image_size is None else image_size
    patches = (size // cfg.patch_size) ** 2
    tokens = _block_tokens(cfg, patches)
    flops = _head_flops(cfg)
    if start < cfg.depth:
        m = _head_tokens(cfg) if reduced_last_block else None
        flops += sum(block_flops(n, n, cfg.dim, cfg.mlp_dim) for n in tokens[start:-1])
        flops += block_flops(m or tokens[-1], tokens[-1], cfg.dim, cfg.mlp_dim)
        if cfg.token_learner_tokens and cfg.token_learner_block >= start:
            flops += token_learner_flops(patches, cfg.dim, cfg.token_learner_tokens)
    return flops


@torch.no_grad()
def hooked_flops(model: nn.Module, images: torch.Tensor, forward=None) -> int:
    """FLOPs per image of the Conv2d and Linear modules that one forward over `images` runs (hooks).

    Counts what the modules see, nothing else: attention products, or a linear map applied through
    F.linear on a weight slice, are invisible to it. forward: what to call (default: model itself).
    """
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:  # nn.Linear
            per_output = module.in_features
        total += 2 * output.numel() * per_output

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        (forward or model)(images)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return total // images.shape[0]


# The architectures counted by formula (attention products included), by their `arch` name; the rest by hooks.
FORMULAS = {
    "vit": lambda model, image_size=None: vit_flops(model.cfg, image_size),
    "fdvit": lambda model, image_size=None: model.flops(image_size),  # tinyvit/fdvit.py
}
# The trained part from unit k on (what freeze.Split.describe reports), where a formula exists.
SUFFIX_FLOPS = {"vit": suffix_flops}
# Models whose published FLOPs leave out the attention products: the training log counts them both ways.
LAYERS_ONLY = {"fdvit": lambda model: model.flops(attention_matmuls=False)}


def model_flops(model: nn.Module, image_size: Optional[int] = None) -> int:
    """Forward FLOPs per image of `model` on square images of `image_size` px (default: the model's).

    A tinyvit VisionTransformer is counted by `vit_flops` (as its `forward` runs: reduced last block
    with class-token pooling), an FDViT by its own formula (FORMULAS). Anything else (the ResNet, a model with new modules) runs one forward on
    a zero image and counts its Conv2d and Linear modules by hooks (`hooked_flops`); that needs
    image_size, or a `cfg.image_size` on the model, and sees no attention products.
    """
    formula = FORMULAS.get(getattr(model, "arch", None))
    if formula is not None:
        return formula(model, image_size)
    cfg = getattr(model, "cfg", None)
    size = image_size or getattr(cfg, "image_size", None)
    if size is None:
        raise ValueError(f"model_flops: give image_size for a {type(model).__name__} (it has no cfg.image_size)")
    channels = getattr(cfg, "in_channels", 3)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    return hooked_flops(model, torch.zeros(1, channels, size, size, device=device))


def resnet_flops(model: nn.Module, image_size: int = 224) -> int:
    """Forward FLOPs per image of a ResNet (convolutions and fc, by hooks): ResNet-50 at 224 is 8.2 G."""
    return model_flops(model, image_size)


def format_flops(flops: float) -> str:
    """1.23 GFLOPs, 45.6 MFLOPs, ..."""
    for unit, scale in (("TFLOPs", 1e12), ("GFLOPs", 1e9), ("MFLOPs", 1e6), ("kFLOPs", 1e3)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.0f} FLOPs"
