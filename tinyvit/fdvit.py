"""FDViT (Xu et al., ICCV 2023, "FDViT: Improve the Hierarchical Architecture of Vision Transformer"), in einops.

A hierarchical ViT whose token grid shrinks by a non-integer stride. Five stages of pre-norm
transformer blocks; between two stages a flexible downsampling (FD) layer resamples the grid
bilinearly from side h to a smaller side h' (27 -> 19 -> 14 -> 10 -> 7 at 224 px: strides 1.44,
1.38, 1.44, 1.5), then a 3x3 convolution changes the width. The token count roughly halves each
stage (729 -> 361 -> 196 -> 100 -> 49) where PiT's stride-2 pooling quarters it (27 -> 14 -> 7).
In training, a masked-autoencoder loss teaches the FD layers to keep what the next stage needs.

Read beside the official code, `AMD-AIG-AIMA/AMD_FDViT` (commit b1119ac): `fdvit.py` (the model,
`bilinear_conv_pooling`, `decoder`, the presets), `vision_transformer.py` (the block and its
attention), `engine.py` (the loss). What it does, and where this file follows it:

- Patch embedding: an overlapping `Conv2d(3, C0, kernel=p, stride=s)` (16/8 for Ti and S: 27x27
  at 224 px; 14/7 for B: 31x31), plus a learned position map `pos_embed` of shape (1, C0, W, W).
- Stage s has width C_s = base_dims[s] * heads[s] and `depth[s]` blocks: LayerNorm(eps 1e-6),
  attention with qkv bias, GELU MLP of ratio 4, DropPath rising as `drop_path * i / total_blocks`
  (the last block gets less than `drop_path`, as in the official code). The attention adds a
  depthwise 3x3 convolution of V (`get_v`, a locally enhanced positional encoding) to `attn @ v`
  before the output projection, so the grids must be square.
- FD layer (`bilinear_conv_pooling`): LayerNorm (PyTorch's default eps 1e-5), tokens to a map,
  `F.grid_sample(align_corners=True)` on a `linspace(-1, 1, h')` grid, a full 3x3 conv C_s -> C_{s+1}.
  That sampling grid puts output pixel j at input coordinate j (h - 1) / (h' - 1), which is exactly
  `F.interpolate(mode="bilinear", align_corners=True)`; this file calls interpolate (the test
  checks it against the official grid_sample formulation).
- No class token: the final LayerNorm(1e-6) on every token, the mean over tokens, the head.
- Masked reconstruction, in training only (`engine.py`): for each FD layer, whole tokens of the stage
  output xt are zeroed with probability `mask_prob` (the rest scaled by 1 / (1 - mask_prob)); the
  same FD layer downsamples the masked map; a decoder (3x3 conv C_{s+1} -> C_s, then bilinear
  upsampling with align_corners=True) rebuilds the full, not detached, xt; loss = cross-entropy +
  ratio * the mean over FD layers of the MSE. The official commands use ratio 0.03, mask 0.2.
  Here the decoders exist only when asked for (`decoders=True`, `set_reconstruction`), a training
  forward stores each FD layer's MSE, and `auxiliary_loss()` hands their mean to the trainer.
- Initialisation: the position map trunc-normal(0.02) and LayerNorms (1, 0); every Linear and Conv
  keeps PyTorch's default, as the official `_init_weights` does (it inherits PiT's).

Module names: `patch_embed.conv`, `pos_embed`, `stages.{s}.blocks.{i}.{norm1, attn.qkv, attn.get_v,
attn.proj, norm2, mlp.fc1, mlp.fc2}`, `stages.{s}.downsample.{ln, conv}` (official `pools.{s}`),
`stages.{s}.decoder.conv` (official `decoders.{s}`), `norm`, `head`. The official layout's
`transformers.{s}` / `pools.{s}` / `decoders.{s}` map through a short table in tinyvit/keymaps.py.
Stages are modules of their own (the FD layer at the end of the stage whose output it shrinks), so
that freezing, the frozen-prefix cache and `forward_intermediates` count stages as they count a
ResNet's.

Other input sizes. The grids follow one rule: W_0 = floor((image_size - patch) / stride) + 1, then
W_s = floor(W_0 * 2^(-s/2) + 1/2), the token count halving each stage. At 224 px it gives the
official `out_size` of all three presets (27, 19, 14, 10, 7 and 31, 22, 16, 11, 8; the tests check
it). `set_image_size` resamples the position map and takes the new grids; a size whose last grid
would be empty is refused.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tinyvit.checks import check_input_dtype, check_int, is_int, take_indices
from tinyvit.kernels import attention
from tinyvit.vit import KERNELS, DropPath, SwitchableLayerNorm, _backend


def stage_grids(image_size: int, patch_size: int, stride: int, stages: int = 5) -> list[int]:
    """The side of each stage's token grid: the patch conv's output W_0, then W_0 * 2^(-s/2) rounded."""
    first = (image_size - patch_size) // stride + 1
    return [math.floor(first * 2 ** (-s / 2) + 0.5) for s in range(stages)]


@dataclass
class FDViTConfig:
    image_size: int = 224
    patch_size: int = 16  # kernel of the patch-embedding conv
    stride: int = 8  # its stride: the patches overlap (kernel = 2 x stride in every official preset)
    in_channels: int = 3
    num_classes: int = 1000  # 0: no head, forward returns the pooled features
    base_dims: tuple = (32, 23, 21, 23, 26)  # head width per stage
    heads: tuple = (2, 4, 6, 8, 10)  # heads per stage; stage width C_s = base_dims[s] * heads[s]
    depth: tuple = (2, 3, 3, 2, 2)  # blocks per stage
    mlp_ratio: float = 4.0
    # The FD layers' decoders of the masked reconstruction (training only, never exported) and the
    # probability that a token is masked (official --mask_thre; 0.2 in the published commands).
    decoders: bool = False
    mask_prob: float = 0.2
    dropout: float = 0.0  # after the position map, in the MLP and after the attention projection
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    kernels: str = "auto"  # as ViTConfig.kernels: which attention and LayerNorm implementation

    def __post_init__(self):
        for name in ("base_dims", "heads", "depth"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not all(is_int(v) and v >= 1 for v in value):
                raise ValueError(f"FDViTConfig.{name}={value!r}; expected a list of positive integers, one per stage")
            setattr(self, name, tuple(value))
        if not len(self.base_dims) == len(self.heads) == len(self.depth) >= 1:
            raise ValueError(f"FDViTConfig: base_dims {self.base_dims}, heads {self.heads} and depth {self.depth} "
                             f"must have one entry per stage each")
        for name in ("image_size", "patch_size", "stride", "in_channels"):
            check_int(self, name, minimum=1)
        check_int(self, "num_classes", minimum=0)
        if self.image_size < self.patch_size:
            raise ValueError(f"FDViTConfig.image_size={self.image_size} is smaller than one patch ({self.patch_size})")
        if not self.grids[-1] >= 1:
            raise ValueError(f"FDViTConfig.image_size={self.image_size}: the stage grids would be {self.grids}; the "
                             f"last stage needs at least one token (use larger images or fewer stages)")
        for name in ("dropout", "attn_dropout", "drop_path", "mask_prob"):
            p = getattr(self, name)
            if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0.0 <= p < 1.0:
                raise ValueError(f"FDViTConfig.{name}={p!r}; expected a probability in [0, 1)")
        if not isinstance(self.mlp_ratio, numbers.Real) or not self.mlp_ratio > 0:
            raise ValueError(f"FDViTConfig.mlp_ratio={self.mlp_ratio!r}; expected a positive number")
        if self.kernels not in KERNELS:
            raise ValueError(f"FDViTConfig.kernels={self.kernels!r}; expected one of {KERNELS}")

    @property
    def widths(self) -> list[int]:
        return [d * h for d, h in zip(self.base_dims, self.heads)]

    @property
    def grids(self) -> list[int]:
        return stage_grids(self.image_size, self.patch_size, self.stride, len(self.depth))

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("base_dims", "heads", "depth"):
            d[name] = list(d[name])
        return d


# ---------------------------------------------------------------------------------------------
# The block: pre-norm attention (with a depthwise conv of V added) and MLP.
# ---------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention plus LePE: out = softmax(q kᵀ / √dh) v + dwconv3x3(v), then proj."""

    def __init__(self, dim: int, num_heads: int, cfg: FDViTConfig):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.kernels = cfg.kernels
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.get_v = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.attn_drop = nn.Dropout(cfg.attn_dropout)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        """x [b, n, d] with n = side * side -> [b, n, d]."""
        q, k, v = rearrange(self.qkv(x), "b n (three h dh) -> three b h n dh", three=3, h=self.num_heads)
        # The channels of v in (h dh) order, as a map over the grid: each channel convolved alone.
        lepe = self.get_v(rearrange(v, "b h (gh gw) dh -> b (h dh) gh gw", gh=side))
        lepe = rearrange(lepe, "b (h dh) gh gw -> b h (gh gw) dh", h=self.num_heads)
        if self.training and self.attn_drop.p > 0:  # dropout on the probabilities needs them explicitly
            out = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)) @ v
        else:
            out = attention(q, k, v, scale=self.scale, backend=_backend(x, self.kernels))
        return self.proj_drop(self.proj(rearrange(out + lepe, "b h n dh -> b n (h dh)")))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, cfg: FDViTConfig, drop_path: float):
        super().__init__()
        self.norm1 = SwitchableLayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, cfg)
        self.norm2 = SwitchableLayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), cfg.dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), side))
        return x + self.drop_path(self.mlp(self.norm2(x)))


# ---------------------------------------------------------------------------------------------
# The flexible downsampling layer and the decoder that trains it.
# ---------------------------------------------------------------------------------------------


class FDLayer(nn.Module):
    """Tokens [b, h*h, c_in] -> map [b, c_out, s, s]: LayerNorm, bilinear resampling of the h x h
    grid to s x s with the corners aligned (a stride of (h - 1) / (s - 1), not an integer), 3x3 conv."""

    def __init__(self, cin: int, cout: int, out_side: int):
        super().__init__()
        self.out_side = out_side
        self.ln = SwitchableLayerNorm(cin, eps=1e-5)  # the official nn.LayerNorm(in_feature): PyTorch's default eps
        self.conv = nn.Conv2d(cin, cout, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        x = rearrange(self.ln(x), "b (gh gw) c -> b c gh gw", gh=side)
        x = F.interpolate(x, size=(self.out_side, self.out_side), mode="bilinear", align_corners=True)
        return self.conv(x)

    def extra_repr(self) -> str:
        return f"out_side={self.out_side}"


class Decoder(nn.Module):
    """Map [b, c_next, s, s] -> [b, c, h, h]: 3x3 conv back to the stage's width, bilinear upsampling."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        return F.interpolate(self.conv(x), size=(side, side), mode="bilinear", align_corners=True)


# ---------------------------------------------------------------------------------------------
# A stage: blocks on one grid, then the FD layer to the next (none after the last stage).
# ---------------------------------------------------------------------------------------------


class Stage(nn.Module):
    def __init__(self, cfg: FDViTConfig, s: int, rates: list[float]):
        super().__init__()
        widths, grids = cfg.widths, cfg.grids
        self.blocks = nn.ModuleList([Block(widths[s], cfg.heads[s], cfg, r) for r in rates])
        last = s == len(cfg.depth) - 1
        self.downsample = None if last else FDLayer(widths[s], widths[s + 1], grids[s + 1])
        self.decoder = Decoder(widths[s + 1], widths[s]) if cfg.decoders and not last else None
        self.mask_prob = cfg.mask_prob
        self.recon_loss: Optional[torch.Tensor] = None  # this FD layer's MSE, set by a training forward

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Map [b, c, h, h] -> the stage's output tokens [b, h*h, c]."""
        side = x.shape[-1]
        x = rearrange(x, "b c gh gw -> b (gh gw) c")
        for blk in self.blocks:
            x = blk(x, side)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map [b, c, h, h] -> the next stage's map [b, c', h', h'] (the last stage: its tokens)."""
        side = x.shape[-1]
        xt = self.run_blocks(x)
        if self.downsample is None:
            return xt
        self.recon_loss = self.reconstruct(xt, side) if self.training and self.decoder is not None else None
        return self.downsample(xt, side)

    def reconstruct(self, xt: torch.Tensor, side: int) -> torch.Tensor:
        """MSE between the stage output and its rebuild from the downsampled, token-masked output."""
        b, n, _ = xt.shape
        keep = (torch.rand(b, n, 1, device=xt.device) >= self.mask_prob).to(xt.dtype)  # whole tokens
        masked = xt * keep / (1 - self.mask_prob)
        rebuilt = self.decoder(self.downsample(masked, side), side)  # [b, c, h, h]
        target = rearrange(xt, "b (gh gw) c -> b c gh gw", gh=side)  # not detached, as the official loss
        return F.mse_loss(rebuilt, target)


# ---------------------------------------------------------------------------------------------
# The whole model.
# ---------------------------------------------------------------------------------------------


class ConvEmbed(nn.Module):
    """Images [b, c, H, W] -> map [b, C0, W0, W0] by an overlapping conv (official `conv_embedding`)."""

    def __init__(self, cfg: FDViTConfig):
        super().__init__()
        self.conv = nn.Conv2d(cfg.in_channels, cfg.widths[0], kernel_size=cfg.patch_size, stride=cfg.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FDViT(nn.Module):
    def __init__(self, cfg: Optional[FDViTConfig] = None, **kwargs):
        super().__init__()
        cfg = cfg if cfg is not None else FDViTConfig(**kwargs)
        self.cfg = cfg
        widths, first = cfg.widths, cfg.grids[0]

        self.patch_embed = ConvEmbed(cfg)
        self.pos_embed = nn.Parameter(torch.zeros(1, widths[0], first, first))
        self.pos_drop = nn.Dropout(cfg.dropout)
        total, start = sum(cfg.depth), 0
        stages = []
        for s, n in enumerate(cfg.depth):
            stages.append(Stage(cfg, s, [cfg.drop_path * i / total for i in range(start, start + n)]))
            start += n
        self.stages = nn.ModuleList(stages)
        self.norm = SwitchableLayerNorm(widths[-1], eps=1e-6)
        self.head = nn.Linear(widths[-1], cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.preprocess = None  # set by create_model / load_pretrained: how the weights expect images
        self.reset_parameters()
        self.set_kernels(cfg.kernels)

    def reset_parameters(self):
        """The official initialisation: position map trunc-normal(0.02), LayerNorms (1, 0), the rest
        PyTorch's defaults (set when the layers were built)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def check_input(self, x: torch.Tensor) -> None:
        c, s = self.cfg.in_channels, self.cfg.image_size
        if x.ndim != 4 or x.shape[1] != c or x.shape[2] != s or x.shape[3] != s:
            raise ValueError(
                f"expected images [B, {c}, {s}, {s}] (this model's image_size; its stage grids are "
                f"{self.cfg.grids}), got shape {tuple(x.shape)}; resize the images, or call "
                f"model.set_image_size(...)"
            )
        check_input_dtype(x, self.patch_embed.conv.weight)

    # -- forward ------------------------------------------------------------------------------

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the first stage's input map [b, C0, W0, W0], positions added."""
        self.check_input(x)
        return self.pos_drop(self.patch_embed(x) + self.pos_embed.to(x.dtype))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the last stage's tokens [b, W4*W4, C4] (not yet normalised: the final norm
        belongs to forward_head, so that every stage boundary is a place to cut the model)."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Last-stage tokens -> final LayerNorm, mean over tokens -> logits (pre_logits: the mean)."""
        x = self.norm(x).mean(dim=1)  # [b, C4]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # -- the masked reconstruction (training only) --------------------------------------------

    def auxiliary_loss(self) -> Optional[torch.Tensor]:
        """The mean reconstruction MSE over the FD layers that ran a training forward with a decoder
        since the last call, or None; taken once (the next call returns None until a new forward).
        The training loss is cross-entropy + ratio * this (official engine.py)."""
        losses = [s.recon_loss for s in self.stages if s.recon_loss is not None]
        for s in self.stages:
            s.recon_loss = None
        return torch.stack([l.float() for l in losses]).mean() if losses else None

    def set_reconstruction(self, mask_prob: Optional[float]) -> "FDViT":
        """Train the FD layers with the masked reconstruction (decoders added where missing, freshly
        initialised; loaded ones kept) at this mask probability, or None: remove the decoders."""
        if mask_prob is None:
            for s in self.stages:
                s.decoder = None
            self.cfg.decoders = False
            return self
        self.cfg = replace(self.cfg, decoders=True, mask_prob=mask_prob)  # validates mask_prob
        widths = self.cfg.widths
        for i, s in enumerate(self.stages):
            s.mask_prob = mask_prob
            if s.downsample is not None and s.decoder is None:
                w = s.downsample.conv.weight
                s.decoder = Decoder(widths[i + 1], widths[i]).to(device=w.device, dtype=w.dtype)
        return self

    def inference_state(self) -> tuple[dict, dict]:
        """(config, state dict) of the model without its training-only decoders: what
        tinyvit.save_pretrained writes."""
        config = dict(self.cfg.to_dict(), decoders=False)
        state = {k: v for k, v in self.state_dict().items() if ".decoder." not in k}
        return config, state

    # -- switches -----------------------------------------------------------------------------

    def set_kernels(self, mode: str) -> "FDViT":
        if mode not in KERNELS:
            raise ValueError(f"kernels={mode!r}; expected one of {KERNELS}")
        self.cfg.kernels = mode
        for m in self.modules():
            if isinstance(m, (SwitchableLayerNorm, Attention)):
                m.kernels = mode
        return self

    def set_image_size(self, image_size: int) -> "FDViT":
        """Serve another size: the position map resampled (bicubic) to the new first grid, and the
        FD layers resampling to the new grids of the rule in this module's docstring."""
        if not is_int(image_size):
            raise ValueError(f"image_size={image_size!r}; expected an integer number of pixels")
        cfg = replace(self.cfg, image_size=image_size)  # refuses a size with an empty last grid
        grids = cfg.grids
        with torch.no_grad():
            pos = F.interpolate(self.pos_embed.data.float(), size=(grids[0], grids[0]), mode="bicubic",
                                align_corners=False, antialias=grids[0] < self.pos_embed.shape[-1])
        self.pos_embed = nn.Parameter(pos.to(self.pos_embed.dtype), requires_grad=self.pos_embed.requires_grad)
        for s, stage in enumerate(self.stages):
            if stage.downsample is not None:
                stage.downsample.out_side = grids[s + 1]
        self.cfg = cfg
        if self.preprocess is not None:
            self.preprocess = self.preprocess.with_image_size(image_size)
        return self

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter groups for layer-wise lr decay, as timm's PiT (also a ViT in stages) has
        them: the embedding, then each stage (its blocks and the FD layer after them), then the norm."""
        return dict(stem=r"^pos_embed|patch_embed", blocks=[(r"^stages\.(\d+)", None), (r"^norm", (99999,))])

    def no_weight_decay(self) -> set[str]:
        """timm's call: parameters AdamW leaves undecayed (the position map; norms and biases by shape)."""
        return {"pos_embed"}

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> "FDViT":
        """A new head for num_classes (0: none), PyTorch's default initialisation as the official
        reset_classifier; the pooling is always the mean ('avg')."""
        if not is_int(num_classes) or num_classes < 0:
            raise ValueError(f"num_classes={num_classes!r}; expected an integer >= 0 (0: no head)")
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool={global_pool!r}; an FDViT has no class token and pools by the mean ('avg')")
        self.cfg.num_classes = num_classes
        w = self.norm.weight
        self.head = nn.Linear(self.num_features, num_classes, device=w.device, dtype=w.dtype) if num_classes else nn.Identity()
        return self

    # -- timm's model interface ---------------------------------------------------------------

    @property
    def num_features(self) -> int:
        return self.cfg.widths[-1]

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices=None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Each chosen stage's output tokens (after its blocks, before its FD layer), timm's
        semantics: indices None (all five), an int n (the last n) or a list; output_fmt "NCHW"
        [b, C_s, W_s, W_s] or "NLC" [b, W_s*W_s, C_s]; norm passes the last stage's through the final
        norm. Returns (forward_features(x), intermediates), or the list alone; stop_early skips the
        stages after the last one asked for (the first item then comes from there)."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r}; expected 'NCHW' or 'NLC'")
        take = take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        x = self.stem(x)
        intermediates = []
        for s, stage in enumerate(self.stages[: max(take) + 1] if stop_early else self.stages):
            side = x.shape[-1]
            xt = stage.run_blocks(x)
            if s in take:
                y = self.norm(xt) if norm and s == last else xt
                intermediates.append(rearrange(y, "b (gh gw) c -> b c gh gw", gh=side).contiguous()
                                     if output_fmt == "NCHW" else y)
            x = xt if stage.downsample is None else stage.downsample(xt, side)
        return intermediates if intermediates_only else (x, intermediates)

    # -- what training and the formats ask of every tinyvit model (vit.py and resnet.py answer too) --

    arch = "fdvit"  # the name config.json, checkpoint.pt and the presets record
    units_name = "stages"  # what --unfreeze N counts

    def units(self) -> list[tuple[str, nn.Module]]:
        """The five stages --unfreeze counts, first to last, with their state-dict names. A stage ends
        with its FD layer (and decoder): they freeze and train with it."""
        return [(f"stages.{i}", stage) for i, stage in enumerate(self.stages)]

    def stem_modules(self) -> list[tuple[str, nn.Module]]:
        """What runs before the first stage: frozen with it."""
        return [("patch_embed", self.patch_embed), ("pos_drop", self.pos_drop)]

    def head_modules(self) -> list[tuple[str, nn.Module]]:
        """What trains in every --unfreeze mode: the final norm and the head."""
        return [("norm", self.norm), ("head", self.head)]

    def forward_prefix(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Images -> the map entering stages[k]."""
        x = self.stem(x)
        for stage in self.stages[:k]:
            x = stage(x)
        return x

    def forward_suffix(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """forward_prefix(images, k) -> logits."""
        for stage in self.stages[k:]:
            x = stage(x)
        return self.forward_head(x)

    distilled_training = False  # timm's switch of a distilled DeiT's two heads; one head here

    def set_distilled_training(self, enable: bool = True) -> None:
        """timm's call for a distilled DeiT; an FDViT has one head, so there is nothing to switch."""

    # -- arithmetic ---------------------------------------------------------------------------

    def flops(self, image_size: Optional[int] = None, attention_matmuls: bool = True) -> int:
        """Forward FLOPs per image (2 per multiply-add), see `fdvit_flops`."""
        return fdvit_flops(self.cfg, image_size, attention_matmuls)


def fdvit_flops(cfg: FDViTConfig, image_size: Optional[int] = None, attention_matmuls: bool = True) -> int:
    """Forward FLOPs per image of an FDViT, counted from shapes (one multiply-add = 2 FLOPs, as
    tinyvit/flops.py counts). Layers: the patch conv, per block qkv 3nd², proj nd², MLP 2·r·nd² and
    the depthwise LePE conv 9nd, the FD layers' 3x3 convs, the head. attention_matmuls adds q kᵀ and
    P v, 2n²d per block. Norms, softmax, GELU and the bilinear resampling are left out.

    FDViT's published 0.6 / 2.8 / 11.9 "GFLOPs" are the multiply-adds of the layers alone (what
    ptflops' module hooks see, main.py): fdvit_flops(cfg, attention_matmuls=False) / 2. Counted with
    the attention products, FDViT-Ti is 0.82 G multiply-adds, where PiT's published 0.7 G include them.
    """
    cfg = cfg if image_size is None else replace(cfg, image_size=image_size)
    widths, grids = cfg.widths, cfg.grids
    macs = grids[0] ** 2 * widths[0] * cfg.in_channels * cfg.patch_size**2
    for s, (d, blocks) in enumerate(zip(widths, cfg.depth)):
        n, hidden = grids[s] ** 2, int(d * cfg.mlp_ratio)
        per_block = 4 * n * d * d + 2 * n * d * hidden + 9 * n * d
        if attention_matmuls:
            per_block += 2 * n * n * d
        macs += blocks * per_block
        if s + 1 < len(widths):
            macs += grids[s + 1] ** 2 * widths[s + 1] * d * 9
    macs += widths[-1] * cfg.num_classes
    return 2 * macs
