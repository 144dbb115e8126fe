"""The Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"), in einops.

Read this file top to bottom beside the paper: every module is defined before it is used, and
every reshape is an einops pattern that doubles as its shape comment. Axis letters are the same
everywhere: b batch, c channels, n tokens, d width, h heads, p1 p2 patch, gh gw patch grid.

Module names follow timm's VisionTransformer (patch_embed.proj, cls_token, pos_embed,
blocks.i.norm1, blocks.i.attn.qkv, blocks.i.attn.proj, blocks.i.norm2, blocks.i.mlp.fc1/fc2,
norm, head, and DeiT's dist_token/head_dist), so a timm state dict loads with no renaming and
the other official layouts (Google .npz, Hugging Face, torchvision) map through short tables in
`tinyvit/keymaps.py`.

Attention and LayerNorm go through `tinyvit.kernels` (fused Triton kernels on CUDA, PyTorch's fused
F.scaled_dot_product_attention and F.layer_norm elsewhere, the plain formulas on request);
`ViTConfig.kernels` chooses.

With class-token pooling the classifier reads token 0 of the final norm (DeiT distilled: tokens 0
and 1), so `forward` runs the last block for those tokens only (`run_last_block`): they attend to
the keys and values of every token, but queries, attention output, projection, norm2, the MLP and
the final norm are computed for the prefix tokens alone. It is the same arithmetic, not an
approximation; at ViT-B/16 the last block costs about 6x fewer FLOPs (tinyvit/flops.py).
`forward_features` still returns every token.

The settings and the rules they must meet are `ViTConfig` in tinyvit/vit_config.py. This file is
the model, read top to bottom: the modules, then VisionTransformer with the switches and timm's
feature interface its users reach for.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from torch.utils.checkpoint import checkpoint

from tinyvit.checks import check_input_dtype, is_int, take_indices
from tinyvit.kernels import attention, layer_norm
from tinyvit.locality import ConvStem, ShiftedPatchTokenization
from tinyvit.token_learner import TokenLearner
from tinyvit.vit_config import KERNELS, ViTConfig


POOLS = {"token": "cls", "avg": "mean", "": "none"}  # timm's global_pool -> ViTConfig.pool
NO_WEIGHT_DECAY = ("pos_embed", "cls_token", "dist_token")  # timm's no_weight_decay(), less reg_token


def _backend(x: torch.Tensor, kernels: str) -> str:
    """Which implementation tinyvit.kernels should run for this tensor.

    "auto" means Triton only for CUDA tensors: on CPU the model uses PyTorch's fused ops even
    when TRITON_INTERPRET=1 is set for the kernel tests, because the interpreter is slow.
    """
    if kernels in ("triton", "reference"):
        return kernels
    if kernels == "auto" and x.is_cuda:
        return "auto"  # tinyvit.kernels picks Triton where it supports the dtype and shape
    return "torch"


# ---------------------------------------------------------------------------------------------
# Patch embedding: the image as a sequence of flattened patches, linearly projected.
# ---------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """x [b, c, H, W] -> tokens [b, (gh gw), d].

    Two views of the same linear map. "linear" flattens each patch in (p1 p2 c) order and applies
    nn.Linear, exactly as the paper writes it; "conv" is a Conv2d with kernel = stride = patch, the
    form every official checkpoint stores (weight [d, c, p1, p2]). The (p1 p2 c) order is the one
    for which conv weights map by a plain rearrange: `d c p1 p2 -> d (p1 p2 c)`.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.kind = cfg.patch_embed
        self.patch_size = cfg.patch_size
        p, c, d = cfg.patch_size, cfg.in_channels, cfg.dim
        if self.kind == "conv":
            self.proj = nn.Conv2d(c, d, kernel_size=p, stride=p)
        else:
            self.proj = nn.Linear(p * p * c, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        if self.kind == "conv":
            x = self.proj(x)  # [b, d, gh, gw]
            return rearrange(x, "b d gh gw -> b (gh gw) d")
        x = rearrange(x, "b c (gh p1) (gw p2) -> b (gh gw) (p1 p2 c)", p1=p, p2=p)
        return self.proj(x)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Official files store the conv kernel; the linear view accepts it by the rearrange above.
        key = prefix + "proj.weight"
        w = state_dict.get(key)
        if self.kind == "linear" and w is not None and w.ndim == 4:
            state_dict[key] = rearrange(w, "d c p1 p2 -> d (p1 p2 c)")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Position embeddings: learned (the paper) or fixed 2-D sin-cos (big_vision, MAE).
# ---------------------------------------------------------------------------------------------


def sincos_2d(grid_size: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, [(gh gw), d], as big_vision's `posemb_sincos_2d`.

    A quarter of the channels each encodes sin(x w), cos(x w), sin(y w), cos(y w) with frequencies
    w_i = temperature^(-i / (d/4 - 1)), so the dot product of two positions depends on their offset.
    """
    y, x = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / max(quarter - 1, 1))
    y = rearrange(y, "gh gw -> (gh gw) 1") * omega  # [(gh gw), d/4]
    x = rearrange(x, "gh gw -> (gh gw) 1") * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).float()


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: int,
    num_prefix_tokens: int,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """Resample a learned position embedding [1, prefix + gh*gw, d] to another square patch grid.

    The prefix tokens (class, distillation) have no place on the grid and are kept as they are;
    the grid part is interpolated as a d-channel image (bicubic, as timm does for .pth weights).
    At the same grid size this returns the input unchanged.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old_grid = math.isqrt(grid.shape[1])
    if old_grid * old_grid != grid.shape[1]:
        raise ValueError(
            f"position embedding has {grid.shape[1]} grid tokens after {num_prefix_tokens} prefix "
            f"tokens, which is not a square grid (shape {tuple(pos_embed.shape)})"
        )
    if old_grid == new_grid:
        return pos_embed
    dtype = grid.dtype
    grid = rearrange(grid, "1 (gh gw) d -> 1 d gh gw", gh=old_grid).float()
    grid = F.interpolate(
        grid, size=(new_grid, new_grid), mode=interpolation, align_corners=False,
        antialias=antialias and interpolation in ("bilinear", "bicubic"),
    )
    grid = rearrange(grid, "1 d gh gw -> 1 (gh gw) d").to(dtype)
    return torch.cat([prefix, grid], dim=1)


# ---------------------------------------------------------------------------------------------
# The transformer block: pre-norm multi-head self-attention and MLP, each with a residual.
# ---------------------------------------------------------------------------------------------


class SwitchableLayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters, same state-dict names) whose implementation `set_kernels` switches:
    the Triton kernel, PyTorch's F.layer_norm or the reference, chosen per call from `kernels` and the
    tensor's device (tinyvit.kernels.FusedLayerNorm fixes one backend instead)."""

    kernels: str = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps, backend=_backend(x, self.kernels))


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (timm's layout: rows [q; k; v])."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.scale = (cfg.dim // cfg.num_heads) ** -0.5
        self.kernels = cfg.kernels
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=cfg.qkv_bias)
        self.attn_drop = nn.Dropout(cfg.attn_dropout)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.proj_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False):
        """x [b, n, d] -> [b, n, d].

        attn_mask (boolean, True = attend, or additive, broadcastable to [b, h, n, n]) and is_causal
        are timm's and F.scaled_dot_product_attention's; with either, PyTorch's attention runs.
        """
        q, k, v = self.split_heads(x)
        return self.merge_heads(self.attend(q, k, v, attn_mask, is_causal))

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """x [b, n, d] -> q, k, v stacked, [3, b, h, n, dh]: views into one qkv product, no copy (the
        fused kernel reads them through their strides)."""
        return rearrange(self.qkv(x), "b n (three h dh) -> three b h n dh", three=3, h=self.num_heads)

    def merge_heads(self, heads: torch.Tensor) -> torch.Tensor:
        """The heads' outputs [b, h, m, dh] -> [b, m, d]: concatenated, then the output projection."""
        return self.proj_drop(self.proj(rearrange(heads, "b h m dh -> b m (h dh)")))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        """softmax(q kᵀ · scale) v: queries [b, h, m, dh] over keys and values [b, h, n, dh] -> [b, h, m, dh]."""
        if attn_mask is not None or is_causal:
            dropout = self.attn_drop.p if self.training else 0.0
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=self.scale,
                                                  dropout_p=dropout)
        if self.training and self.attn_drop.p > 0:
            # Dropout on the probabilities needs them: a fused kernel never materialises the n x n matrix.
            return self.attn_drop(self.probabilities(q, k)) @ v
        return attention(q, k, v, scale=self.scale, backend=_backend(q, self.kernels))

    def probabilities(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """softmax(q kᵀ · scale), [b, h, m, n], computed explicitly."""
        return ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """x [b, n, d] -> the attention probabilities [b, h, n, n] (what the fused path never writes out)."""
        q, k, _ = self.split_heads(x)
        return self.probabilities(q, k)


class LocalitySelfAttention(Attention):
    """Locality Self-Attention (Lee, Lee & Song 2021; aanna0701/SPT_LSA_ViT `models/vit.py`, is_LSA):
    the score scale is a learnable temperature per head, initialised to dh^-0.5, and each token's
    score with itself (the diagonal, class token included) is masked before the softmax, so attention
    goes to the other tokens. The authors mask with -987654321; here the dtype's lowest value, which
    gives the same probabilities. Always the explicit computation (the fused kernels take no mask)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__(cfg)
        self.scale = nn.Parameter(torch.full((cfg.num_heads,), (cfg.dim // cfg.num_heads) ** -0.5))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("lsa=True masks each token's own score; attn_mask and is_causal are not supported with it")
        return self.attn_drop(self.probabilities(q, k)) @ v

    def probabilities(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        s = (q @ k.transpose(-2, -1)) * rearrange(self.scale, "h -> h 1 1")  # [b, h, m, n]
        self_score = torch.eye(s.shape[-2], s.shape[-1], dtype=torch.bool, device=s.device)  # query i is token i
        return s.masked_fill(self_score, torch.finfo(s.dtype).min).softmax(dim=-1)


class Mlp(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_dim)
        self.act = nn.GELU(approximate="tanh" if cfg.act == "gelu_tanh" else "none")
        self.drop1 = nn.Dropout(cfg.dropout)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.dim)
        self.drop2 = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop a residual branch for whole samples."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """The paper's eq. 2-3: pre-norm multi-head self-attention, then the MLP, each with a residual."""

    def __init__(self, cfg: ViTConfig, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = SwitchableLayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = LocalitySelfAttention(cfg) if cfg.lsa else Attention(cfg)
        self.norm2 = SwitchableLayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False):
        """x [b, n, d] -> [b, n, d]. attn_mask, is_causal: as Attention.forward (timm's Block takes them too)."""
        x = x + self.drop_path(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


# ---------------------------------------------------------------------------------------------
# The whole model.
# ---------------------------------------------------------------------------------------------


class VisionTransformer(nn.Module):
    def __init__(self, cfg: Optional[ViTConfig] = None, **kwargs):
        super().__init__()
        cfg = cfg if cfg is not None else ViTConfig(**kwargs)
        self.cfg = cfg
        self.num_prefix_tokens = cfg.num_prefix_tokens
        d = cfg.dim

        if cfg.patch_embed == "spt":
            self.patch_embed = ShiftedPatchTokenization(cfg.in_channels, d, cfg.patch_size)
        elif cfg.patch_embed == "conv_stem":
            self.patch_embed = ConvStem(cfg.in_channels, d, cfg.patch_size)
        else:
            self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.distilled else None
        num_tokens = self.num_prefix_tokens + cfg.grid_size**2
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, d))
        else:  # fixed: a buffer, not in the state dict; prefix tokens get a zero position (as MAE)
            table = F.pad(sincos_2d(cfg.grid_size, d), (0, 0, self.num_prefix_tokens, 0))
            self.register_buffer("pos_embed", table[None], persistent=False)
        self.pos_drop = nn.Dropout(cfg.dropout)

        # Stochastic depth rising linearly from 0 in the first block to drop_path in the last (DeiT).
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.Sequential(*[Block(cfg, drop_path=r) for r in rates])
        # TokenLearner: its own module, which run_blocks runs after block token_learner_at. It is
        # registered under that block (blocks.{k}.token_learner.*) because what counts by block counts
        # it with the block it follows: a frozen prefix, layer-wise lr decay, the checkpoint keys.
        self.token_learner_at = cfg.token_learner_block if cfg.token_learner_tokens else None
        if self.token_learner_at is not None:
            self.blocks[self.token_learner_at].add_module("token_learner", TokenLearner(
                d, cfg.token_learner_tokens, self.num_prefix_tokens, eps=cfg.norm_eps, dropout=cfg.dropout
            ))
        self.norm = nn.Identity() if cfg.fc_norm else SwitchableLayerNorm(d, eps=cfg.norm_eps)
        self.fc_norm = SwitchableLayerNorm(d, eps=cfg.norm_eps) if cfg.fc_norm else None

        width = cfg.pre_logits or d
        self.pre_logits = nn.Linear(d, cfg.pre_logits) if cfg.pre_logits else None
        self.head = nn.Linear(width, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.head_dist = None
        if cfg.distilled:
            self.head_dist = nn.Linear(d, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.preprocess = None  # set by create_model / load_pretrained: how the weights expect images
        self.grad_checkpointing = False  # set_grad_checkpointing
        self.distilled_training = False  # set_distilled_training: a DeiT returns both heads in training
        self.reset_parameters()
        self.set_kernels(cfg.kernels)

    def reset_parameters(self):
        """timm's initialisation: truncated normal(0.02) tokens and Linear weights, zero biases."""
        for name in ("cls_token", "dist_token"):
            if getattr(self, name) is not None:
                nn.init.trunc_normal_(getattr(self, name), std=0.02)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- input checks ---------------------------------------------------------------------------

    def check_input(self, x: torch.Tensor) -> None:
        """Fail early, naming the shapes, instead of deep inside a reshape."""
        c, s = self.cfg.in_channels, self.cfg.image_size
        if x.ndim != 4:
            raise ValueError(
                f"expected a batch of images [B, {c}, {s}, {s}], got a tensor of shape {tuple(x.shape)}"
            )
        if x.shape[1] != c:
            raise ValueError(
                f"expected {c} channels, got {x.shape[1]} (input shape {tuple(x.shape)}); "
                f"images must be [B, {c}, {s}, {s}]"
            )
        if x.shape[2] != s or x.shape[3] != s:
            raise ValueError(
                f"expected images of {s}x{s} pixels (this model's image_size), got "
                f"{x.shape[2]}x{x.shape[3]} (input shape {tuple(x.shape)}); resize the images, or "
                f"call model.set_image_size({x.shape[2]}) to resample the position embedding"
            )
        check_input_dtype(x, self.patch_embed.proj.weight)

    # -- forward ------------------------------------------------------------------------------

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images [b, c, H, W] -> tokens [b, prefix + gh*gw, d] with positions added."""
        self.check_input(x)
        x = self.patch_embed(x)  # [b, gh*gw, d]
        b = x.shape[0]
        prefix = [repeat(t, "1 1 d -> b 1 d", b=b) for t in (self.cls_token, self.dist_token) if t is not None]
        x = torch.cat(prefix + [x], dim=1)  # [b, prefix + gh*gw, d]: [cls, dist, patches]
        return self.pos_drop(x + self.pos_embed.to(x.dtype))

    @property
    def token_learner(self) -> Optional[TokenLearner]:
        """The TokenLearner that follows block token_learner_at, or None."""
        return None if self.token_learner_at is None else self.blocks[self.token_learner_at].token_learner

    def run_blocks(self, x: torch.Tensor, start: int = 0, stop: Optional[int] = None,
                   attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        """Tokens through blocks[start:stop], every token kept, and through the TokenLearner if it follows
        one of them. With set_grad_checkpointing, in training with autograd on, each block's activations
        are recomputed in the backward instead of stored. attn_mask / is_causal: passed to every block's
        attention (timm's arguments)."""
        for i in range(len(self.blocks))[start:stop]:
            x = self._block(self.blocks[i], x, attn_mask, is_causal)
            if i == self.token_learner_at:
                x = self.token_learner(x)  # [b, p + n, d] -> [b, p + s, d]
        return x

    def _block(self, blk: "Block", x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(blk, x, attn_mask=attn_mask, is_causal=is_causal, use_reentrant=False)
        return blk(x, attn_mask=attn_mask, is_causal=is_causal)

    @property
    def head_tokens(self) -> Optional[int]:
        """How many leading tokens of the final norm the head reads (class, distillation), or None
        when it reads every token (mean pooling, or a TokenLearner after the last block)."""
        if self.cfg.pool != "cls" or self.token_learner_at == len(self.blocks) - 1:
            return None
        return self.num_prefix_tokens

    def forward_from(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Tokens entering blocks[start] [b, n, d] -> the normalised tokens the head reads.

        With class-token pooling that is [b, head_tokens, d]: the last block runs for those queries
        only (run_last_block). The same numbers as forward_features(x)[:, :head_tokens] within fp32
        rounding, gradients included. start = depth: x is already the last block's output.
        """
        m, last = self.head_tokens, len(self.blocks) - 1
        if m is None or start > last:
            return self.norm(self.run_blocks(x, start))
        return self.norm(self.run_last_block(self.run_blocks(x, start, last), m))

    def run_last_block(self, x: torch.Tensor, num_queries: int) -> torch.Tensor:
        """blocks[-1] for the first m = num_queries tokens only: x [b, n, d] -> [b, m, d].

        Every token is still a key and a value for them; the queries, and what is per token after the
        attention (residual, norm2, MLP), are computed for those m alone: the model's last block, whose
        other tokens no classifier reads. The same arithmetic as blocks[-1](x)[:, :m], not an approximation.
        """
        blk, m = self.blocks[-1], num_queries
        attn, h, d = blk.attn, blk.norm1(x), x.shape[-1]
        # The rows [q; k; v] of the one qkv weight, used apart: keys and values for every token, queries
        # for the first m only. Slices of the parameter, so gradients reach qkv as usual.
        w, bias = attn.qkv.weight, attn.qkv.bias
        q = F.linear(h[:, :m], w[:d], None if bias is None else bias[:d])  # [b, m, d]
        kv = F.linear(h, w[d:], None if bias is None else bias[d:])  # [b, n, 2 d]
        q = rearrange(q, "b m (h dh) -> b h m dh", h=attn.num_heads)
        k, v = rearrange(kv, "b n (two h dh) -> two b h n dh", two=2, h=attn.num_heads)
        x = x[:, :m] + blk.drop_path(attn.merge_heads(attn.attend(q, k, v)))
        x = x + blk.drop_path(blk.mlp(blk.norm2(x)))
        return x

    def forward_features(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                         is_causal: bool = False) -> torch.Tensor:
        """Images -> tokens [b, n, d], every token (normalised; with fc_norm not yet, as timm).
        attn_mask / is_causal: timm's, for every block's attention."""
        return self.norm(self.run_blocks(self.embed(x), attn_mask=attn_mask, is_causal=is_causal))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        """Tokens [b, n, d] from forward_features -> logits [b, classes] (pre_logits=True: the
        pooled features, the input of the head).

        DeiT distilled: the mean of its two heads' logits (class token, distillation token), as the
        DeiT paper evaluates and timm returns by default; both, as a tuple, in training after
        set_distilled_training(True) (what distillation needs, tinyvit/distill.py). Its pooled
        features are the mean of the two tokens, as timm's (what the heads average when they are the
        identity). pool="none" (timm's global_pool=''): every token, unpooled.
        """
        if self.cfg.pool == "mean":
            feats = x[:, self.num_prefix_tokens:].mean(dim=1)
        elif self.cfg.pool == "none" and self.head_dist is None:
            feats = x
        else:
            feats = x[:, 0]
        if self.fc_norm is not None:
            feats = self.fc_norm(feats)
        if self.pre_logits is not None:
            feats = torch.tanh(self.pre_logits(feats))
        if pre_logits:
            return feats if self.head_dist is None else (feats + x[:, 1]) / 2
        logits = self.head(feats)
        if self.head_dist is None:
            return logits
        logits_dist = self.head_dist(x[:, 1])
        if self.distilled_training and self.training:
            return logits, logits_dist
        return (logits + logits_dist) / 2

    def forward(self, x: torch.Tensor):
        # forward_features, but the last block computes only the tokens the head reads.
        return self.forward_head(self.forward_from(self.embed(x)))

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention probabilities of every block, a list of [b, h, n, n] (Attention.attention_map,
        computed explicitly); with TokenLearner, n = prefix + S in the blocks after it."""
        x = self.embed(x)
        maps = []
        for i, blk in enumerate(self.blocks):
            maps.append(blk.attn.attention_map(blk.norm1(x)))
            x = self.run_blocks(x, i, i + 1)
        return maps

    # -- switches -----------------------------------------------------------------------------

    def set_kernels(self, mode: str) -> "VisionTransformer":
        """"auto" (Triton on CUDA), "triton" (always), "torch" (PyTorch's fused ops) or "reference"
        (the plain formulas of tinyvit.kernels)."""
        if mode not in KERNELS:
            raise ValueError(f"kernels={mode!r}; expected 'auto', 'triton', 'torch' or 'reference'")
        self.cfg.kernels = mode
        for m in self.modules():
            if isinstance(m, (SwitchableLayerNorm, Attention)):
                m.kernels = mode
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward instead of keeping them (timm's call,
        which returns None as timm's does).

        Training memory for the blocks falls from all their intermediate activations to one [b, n, d]
        input per block, for about one more forward of compute (torch.utils.checkpoint, non-reentrant).
        Only in training with autograd on; eval and inference are unchanged.
        """
        self.grad_checkpointing = bool(enable)

    def set_distilled_training(self, enable: bool = True) -> None:
        """A distilled DeiT in training mode returns (class-head, distillation-head) logits instead
        of their mean: timm's call and default (off), which tinyvit's distillation turns on."""
        self.distilled_training = bool(enable)

    def set_image_size(self, image_size: int) -> "VisionTransformer":
        """Serve another image size: resample the position embedding over the new patch grid."""
        cfg = self.cfg
        if not is_int(image_size) or image_size < cfg.patch_size:
            raise ValueError(f"image_size={image_size!r}; expected a multiple of patch_size={cfg.patch_size}, "
                             f"at least one patch")
        if image_size % cfg.patch_size:
            raise ValueError(f"image_size={image_size} is not a multiple of patch_size={cfg.patch_size}")
        new_grid = image_size // cfg.patch_size
        if isinstance(self.pos_embed, nn.Parameter):
            with torch.no_grad():
                resampled = resample_pos_embed(self.pos_embed.data, new_grid, self.num_prefix_tokens)
            self.pos_embed = nn.Parameter(resampled, requires_grad=self.pos_embed.requires_grad)
        else:
            table = F.pad(sincos_2d(new_grid, cfg.dim), (0, 0, self.num_prefix_tokens, 0))
            self.pos_embed = table[None].to(self.pos_embed)
        cfg.image_size = image_size
        if self.preprocess is not None:
            self.preprocess = self.preprocess.with_image_size(image_size)
        return self

    def set_input_size(self, img_size=None, patch_size=None) -> None:
        """timm's name for set_image_size: img_size an int or a square (h, w); the patch size stays
        (timm can resample the patch embedding too; tinyvit refuses a different one)."""
        if patch_size is not None:
            p = (patch_size, patch_size) if is_int(patch_size) else tuple(patch_size)
            if p != (self.cfg.patch_size, self.cfg.patch_size):
                raise ValueError(f"set_input_size(patch_size={patch_size!r}): tinyvit keeps the patch size "
                                 f"({self.cfg.patch_size}); only img_size can change")
        if img_size is None:
            return
        if not is_int(img_size):
            h, w = tuple(img_size)
            if h != w:
                raise ValueError(f"set_input_size(img_size={img_size!r}): tinyvit's ViT takes square images")
            img_size = h
        self.set_image_size(img_size)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> "VisionTransformer":
        """New, freshly initialised head(s) for `num_classes` classes (0: none); global_pool, as
        in timm: 'token' (pool='cls'), 'avg' (pool='mean') or '' (pool='none': every token, as
        timm's feature extraction asks with reset_classifier(0, '')) changes the pooling too. A
        distilled DeiT takes None, '' or 'token' and keeps reading its two tokens, as timm's."""
        cfg = self.cfg
        if not is_int(num_classes) or num_classes < 0:
            raise ValueError(f"num_classes={num_classes!r}; expected an integer >= 0 (0: no head)")
        if global_pool is not None:
            if global_pool not in POOLS:
                raise ValueError(f"global_pool={global_pool!r}; expected 'token', 'avg' or ''")
            if global_pool == "token" and not cfg.class_token:
                raise ValueError("global_pool='token' needs a class token; this model has none")
            if cfg.distilled and global_pool == "avg":
                raise ValueError("global_pool='avg' on a distilled DeiT: its heads read the class and distillation tokens")
            if not cfg.distilled:
                cfg.pool = POOLS[global_pool]
        cfg.num_classes = num_classes
        dev = self.cls_token.device if self.cls_token is not None else self.pos_embed.device
        width = cfg.pre_logits or cfg.dim

        def new_head(w):
            if num_classes == 0:
                return nn.Identity()
            head = nn.Linear(w, num_classes, device=dev)
            nn.init.trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)
            return head

        self.head = new_head(width)
        if self.head_dist is not None:
            self.head_dist = new_head(cfg.dim)
        return self

    # -- timm's model interface (what its users reach for first) -----------------------------

    @property
    def num_features(self) -> int:
        """Width of the tokens forward_features returns (timm's num_features)."""
        return self.cfg.dim

    @property
    def embed_dim(self) -> int:
        return self.cfg.dim

    @property
    def head_hidden_size(self) -> int:
        """Width of what the head reads (the pre-logits layer's, for Google's in21k files)."""
        return self.cfg.pre_logits or self.cfg.dim

    @property
    def has_class_token(self) -> bool:
        return self.cfg.class_token

    @property
    def global_pool(self) -> str:
        """timm's name for the pooling: 'token', 'avg' or ''."""
        return {v: k for k, v in POOLS.items()}[self.cfg.pool]

    @property
    def feature_info(self) -> list[dict]:
        """What forward_intermediates returns per block, as timm lists it: module, channels, stride."""
        return [dict(module=f"blocks.{i}", num_chs=self.cfg.dim, reduction=self.cfg.patch_size)
                for i in range(len(self.blocks))]

    @property
    def pretrained_cfg(self) -> dict:
        """timm's pretrained_cfg, built from `preprocess` (resolution, resize and crop, mean/std),
        so timm.data.resolve_data_config(model=m) gives the transform these weights expect.
        Without a preprocess only the input size is known and timm falls back to its defaults."""
        cfg = self.cfg
        out = dict(input_size=(cfg.in_channels, cfg.image_size, cfg.image_size), fixed_input_size=True,
                   num_classes=cfg.num_classes, first_conv="patch_embed.proj",
                   classifier="head" if self.head_dist is None else ("head", "head_dist"))
        if self.preprocess is not None:
            out.update(self.preprocess.timm_cfg(cfg.in_channels))
        return out

    @property
    def default_cfg(self) -> dict:
        """timm's older name for pretrained_cfg."""
        return self.pretrained_cfg

    def no_weight_decay(self) -> set[str]:
        """Parameters that take no weight decay beyond the 1-d ones (biases, norms): the tokens and
        the position table, timm's names (its create_optimizer_v2 reads this; so does
        tinyvit.freeze.param_groups). A sin-cos table is a buffer, never decayed."""
        return set(NO_WEIGHT_DECAY)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter groups for layer-wise lr decay: the embedding (stem) first, then one
        group per block, the final norm with the last block; unmatched (heads, fc_norm, pre_logits)
        go last. The same regular expressions as timm's VisionTransformer, DeiT's dist_token added."""
        return dict(
            stem=r"^cls_token|dist_token|pos_embed|patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def get_classifier(self):
        """The head; for a distilled DeiT (head, head_dist), as timm returns them."""
        return self.head if self.head_dist is None else (self.head, self.head_dist)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices=None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        output_dict: bool = False,
        attn_mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
    ):
        """The tokens after chosen blocks, timm's feature-extraction call with its arguments and semantics.

        indices: None, every block; an int n, the last n blocks; a list, those blocks (negative
        from the end), returned in block order. norm: pass each through the final `norm`.
        output_fmt: "NCHW" patch tokens as a map [b, d, gh, gw], or "NLC" [b, gh*gw, d]; the
        prefix tokens [b, prefix, d] come along as (tokens, prefix) pairs with return_prefix_tokens.
        Returns (forward_features(x), intermediates), or only the list with intermediates_only;
        stop_early skips the blocks after the last one asked for (the first item then comes from there).
        output_dict: a dict as timm's, 'image_intermediates', 'image_intermediates_prefix' (with
        return_prefix_tokens) and 'image_features' (unless intermediates_only). attn_mask /
        is_causal: passed to every block's attention, as forward_features.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r}; expected 'NCHW' or 'NLC'")
        take = take_indices(len(self.blocks), indices)
        x = self.embed(x)
        intermediates = []
        for i in range(max(take) + 1 if stop_early else len(self.blocks)):
            x = self.run_blocks(x, i, i + 1, attn_mask, is_causal)
            if i in take:
                intermediates.append(self.norm(x) if norm else x)
        p = self.num_prefix_tokens
        prefix = [y[:, :p] for y in intermediates]
        intermediates = [y[:, p:] for y in intermediates]
        if output_fmt == "NCHW":
            g = self.cfg.grid_size
            if any(y.shape[1] != g * g for y in intermediates):  # e.g. tokens learned, not a patch grid
                n = [y.shape[1] for y in intermediates]
                raise ValueError(f"output_fmt='NCHW': the blocks return {n} tokens, not a {g}x{g} patch grid; use 'NLC'")
            intermediates = [rearrange(y, "b (gh gw) d -> b d gh gw", gh=g).contiguous() for y in intermediates]
        if output_dict:
            out = {"image_intermediates": intermediates}
            if return_prefix_tokens and p:
                out["image_intermediates_prefix"] = prefix
            if not intermediates_only:
                out["image_features"] = self.norm(x)
            return out
        if return_prefix_tokens and p:
            intermediates = list(zip(intermediates, prefix))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    # -- what training and the formats ask of every tinyvit model (resnet.py and fdvit.py answer too) --

    arch = "vit"  # the name config.json, checkpoint.pt and the presets record
    units_name = "blocks"  # what --unfreeze N counts

    def units(self) -> list[tuple[str, nn.Module]]:
        """The repeated units --unfreeze counts, first to last, with their state-dict names."""
        return [(f"blocks.{i}", blk) for i, blk in enumerate(self.blocks)]

    def stem_modules(self) -> list[tuple[str, nn.Module]]:
        """What runs before the first unit: frozen with it."""
        return [("patch_embed", self.patch_embed), ("pos_drop", self.pos_drop)]

    def head_modules(self) -> list[tuple[str, nn.Module]]:
        """What trains in every --unfreeze mode: the final norm (it belongs to no block, and its scale
        and shift adapt frozen features to a new head most cheaply), the head and its optional extras."""
        group = [("norm", self.norm)]
        return group + [(n, getattr(self, n)) for n in ("fc_norm", "pre_logits", "head", "head_dist")
                        if getattr(self, n) is not None]

    def forward_prefix(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Images -> the tokens entering blocks[k] [b, n, d]. k = depth with class-token pooling: the
        last block has run for the head's tokens only, [b, head_tokens, d] (what forward_suffix reads)."""
        x = self.embed(x)
        if k == len(self.blocks) and self.head_tokens is not None:
            return self.run_last_block(self.run_blocks(x, 0, k - 1), self.head_tokens)
        return self.run_blocks(x, 0, k)

    def forward_suffix(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """forward_prefix(images, k) -> logits: blocks[k:] (the last for the head's tokens only), the head."""
        return self.forward_head(self.forward_from(x, k))

    def inference_state(self) -> tuple[dict, dict]:
        """(config, state dict): what tinyvit.save_pretrained writes."""
        return self.cfg.to_dict(), self.state_dict()

    def set_reconstruction(self, mask_prob: Optional[float]) -> "VisionTransformer":
        """FDViT's masked reconstruction of its FD layers; a ViT has none, so only None is accepted."""
        if mask_prob is not None:
            raise ValueError("a ViT has no FD layers to train (an FDViT has)")
        return self
