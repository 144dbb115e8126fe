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

Its compute, and the model's with and without it: `token_learner_flops` and `vit_flops` in tinyvit/flops.py.
"""
from __future__ import annotations

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
