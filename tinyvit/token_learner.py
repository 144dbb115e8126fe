"""TokenLearner v1.1 (Ryoo et al. 2021, "TokenLearner: What Can 8 Learned Tokens Do for Images and
Videos?", NeurIPS): learn S tokens from the N patch tokens partway through a ViT.

Self-attention and the MLP cost per block grows with the number of tokens (the MLP linearly, the
attention matrix quadratically), and past the middle of a ViT neighbouring patch tokens carry much
the same information. TokenLearner replaces the N patch tokens by S << N learned ones: for each of
its S outputs it predicts a spatial weighting over the N tokens and takes the weighted sum. Every
later block then runs on S tokens (plus the class / distillation tokens) instead of N. The paper
places it in the middle of the network (ViT-B/16: after 6 of 12 blocks) with S = 8 and reports
the accuracy kept while the compute of the later blocks nearly vanishes.

Version 1.1 (the reference: google-research/scenic, projects/token_learner/model.py,
`TokenLearnerModuleV11`; the original v1 used four 3x3 convolutions and a sigmoid):

    x                 [b, n, d]      the patch tokens (n = gh gw), positions already added
    LayerNorm(x)      [b, n, d]
    MLP: d -> 64 -> S [b, n, s]      one logit per output token and position (GELU, bottleneck 64)
    softmax over n    [b, s, n]      each learned token is a convex combination of the patch tokens
    weights @ x       [b, s, d]      the S learned tokens (of the un-normalised x, as scenic does)

Scenic's ViT pools by global average ('gap') and has no class token. tinyvit's ViT may have a class
token and DeiT's distillation token: they are kept apart, not mixed into the learned tokens, and
put back in front of them, so the heads read them exactly as before. With pool="mean" the head
averages the S learned tokens.

`vit_flops(cfg)` counts the model's forward FLOPs (2 per multiply-add) with and without the module.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from einops import rearrange
from torch import nn

BOTTLENECK = 64  # scenic's TokenLearnerModuleV11.bottleneck_dim default


class TokenLearner(nn.Module):
    """tokens [b, prefix + n, d] -> [b, prefix + s, d]: the n patch tokens become s learned ones.

    State-dict names: norm, mlp.fc1, mlp.fc2 (scenic's LayerNorm and MlpBlock 'token_masking').
    """

    def __init__(self, dim: int, num_tokens: int, num_prefix_tokens: int, bottleneck: int = BOTTLENECK,
                 eps: float = 1e-6, dropout: float = 0.0):
        super().__init__()
        self.num_tokens = num_tokens
        self.num_prefix_tokens = num_prefix_tokens
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential()  # a Sequential with names, so the keys read mlp.fc1 / mlp.fc2
        self.mlp.add_module("fc1", nn.Linear(dim, bottleneck))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("drop1", nn.Dropout(dropout))
        self.mlp.add_module("fc2", nn.Linear(bottleneck, num_tokens))
        self.mlp.add_module("drop2", nn.Dropout(dropout))

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens [b, n, d] -> the spatial weights [b, s, n] (each row sums to 1)."""
        logits = self.mlp(self.norm(x))  # [b, n, s]
        return rearrange(logits, "b n s -> b s n").softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prefix, patches = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens:]  # [b, p, d], [b, n, d]
        learned = self.weights(patches) @ patches  # [b, s, n] @ [b, n, d] -> [b, s, d]
        return torch.cat([prefix, learned], dim=1)  # [b, p + s, d]

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, num_prefix_tokens={self.num_prefix_tokens}"


# ---------------------------------------------------------------------------------------------
# Compute: forward FLOPs of a ViT, with and without TokenLearner.
# ---------------------------------------------------------------------------------------------


def block_flops(n: int, d: int, mlp_dim: int) -> int:
    """One transformer block on n tokens of width d: 2 FLOPs per multiply-add of the matmuls.

    qkv 2·n·d·3d, scores QKᵀ 2·n²·d, weighted values 2·n²·d, output projection 2·n·d², MLP 2·2·n·d·mlp.
    LayerNorms, softmax, GELU and residual adds are O(n·d) and left out, as the usual counts do.
    """
    return 2 * n * d * 3 * d + 4 * n * n * d + 2 * n * d * d + 4 * n * d * mlp_dim


def token_learner_flops(n: int, d: int, s: int, bottleneck: int = BOTTLENECK) -> int:
    """The module on n patch tokens: MLP 2·n·(d·64 + 64·s), weighted sums 2·s·n·d."""
    return 2 * n * (d * bottleneck + bottleneck * s) + 2 * s * n * d


def vit_flops(cfg) -> int:
    """Forward FLOPs of one image through a tinyvit ViT (a ViTConfig), matmuls only.

    Patch embedding 2·N·(p²·c)·d, the blocks at their token counts, TokenLearner when it is on, and
    the head(s). With TokenLearner after block `at`, blocks 0..at see prefix + N tokens and the rest
    prefix + S.
    """
    n_patches = cfg.grid_size**2
    p = cfg.num_prefix_tokens
    total = 2 * n_patches * cfg.patch_size**2 * cfg.in_channels * cfg.dim
    s, at = cfg.token_learner_tokens, cfg.token_learner_block
    for i in range(cfg.depth):
        tokens = p + (s if s and i > at else n_patches)
        total += block_flops(tokens, cfg.dim, cfg.mlp_dim)
    if s:
        total += token_learner_flops(n_patches, cfg.dim, s)
    if cfg.pre_logits:
        total += 2 * cfg.dim * cfg.pre_logits
    total += 2 * (cfg.pre_logits or cfg.dim) * cfg.num_classes  # head
    if cfg.distilled:
        total += 2 * cfg.dim * cfg.num_classes  # head_dist
    return total


def describe_flops(cfg) -> str:
    """One log line: what TokenLearner saves for this config."""
    off = replace(cfg, token_learner_tokens=0)
    on, base = vit_flops(cfg), vit_flops(off)
    return (f"TokenLearner: {cfg.token_learner_tokens} learned tokens after block {cfg.token_learner_block} "
            f"(of {cfg.grid_size**2} patch tokens): {on / 1e6:,.1f} MFLOPs per image forward, "
            f"{base / 1e6:,.1f} without ({100 * (1 - on / base):.0f}% less)")
