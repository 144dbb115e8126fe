"""Masked autoencoders (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"), around a
tinyvit VisionTransformer, as facebookresearch/mae's `models_mae.py` builds them.

Pretraining without labels: cut the image into patches, hide a random 75% of them, run the encoder on
the visible quarter only, and train a light decoder to paint the hidden patches back in pixels.

    imgs [b, c, H, W] --patch_embed--> [b, L, d] + positions
        --random_masking--> visible [b, keep, d]      keep = int(L * (1 - mask_ratio))
        --(class token) + encoder blocks + norm--> latent [b, p + keep, d]
        --decoder_embed--> [b, p + keep, dd], + one shared mask token per hidden patch,
        --unshuffle (ids_restore) + fixed sin-cos positions--> [b, p + L, dd]
        --decoder blocks, norm, decoder_pred--> pixels [b, L, p1*p2*c]
        loss: MSE against the patch pixels, averaged over the hidden patches only

The encoder *is* the tinyvit VisionTransformer it wraps (`mae.encoder`, its own module names), so
after pretraining it saves, loads, exports and draws attention maps like any other tinyvit ViT;
tinyvit/pretrain.py saves it as the run's model. `finetune_model` then gives it a new head for
`python -m tinyvit.finetune --weights PRETRAIN_RUN`; MAE's layer-wise learning-rate decay for that
fine-tuning (`--layer-decay`) is tinyvit/freeze.py's `param_groups`, for every model.

Where this follows the official code, and where not:
- masking, decoder, loss, norm_pix_loss, initialisation: `models_mae.py`, line for line in einops;
- positions: `util/pos_embed.py:get_2d_sincos_pos_embed` (`mae_sincos_2d`). The encoder's table is
  MAE's too: a learned-position encoder gets it copied in and frozen (requires_grad False), as MAE's
  fixed `pos_embed` parameter; fine-tuning then trains it, as MAE's fine-tuning does. An encoder built
  with pos_embed="sincos" keeps tinyvit's big_vision table instead (see `mae_sincos_2d` for the
  difference). The decoder's table is a buffer rebuilt on load, not a state-dict entry as in MAE;
- layer-wise decay (tinyvit/freeze.py): `util/lr_decay.py:param_groups_lrd` (BEiT's) through timm's
  `group_matcher` grouping, which puts the final norm with the last block (MAE: with the head);
- what MAE's code has no answer for is refused: a distillation token, TokenLearner, and patch
  embeddings that see beyond their patch (SPT, the conv stem: through their receptive field the
  visible tokens would carry pixels of the hidden patches the loss asks for).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from tinyvit.errors import TinyvitError
from tinyvit.vit import Block, SwitchableLayerNorm, ViTConfig, VisionTransformer

# The file that marks a run directory of tinyvit.pretrain: its model is an encoder to fine-tune.
PRETRAIN_FILE = "pretrain.json"
# What the encoder's fine-tuning may not change: the shapes and the computation of the weights.
ARCHITECTURE = ("in_channels", "patch_size", "dim", "depth", "num_heads", "mlp_dim", "qkv_bias",
                "patch_embed", "class_token", "distilled", "lsa")


# ---------------------------------------------------------------------------------------------
# Positions: MAE's 2-D sin-cos table.
# ---------------------------------------------------------------------------------------------


def mae_sincos_2d(grid_size: int, dim: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos position table [(gh gw), d] (`util/pos_embed.py`, without the class row).

    Channels [sin(x w), cos(x w), sin(y w), cos(y w)], a quarter each, x the column and y the row,
    with w_i = 1 / 10000^(i / (d/4)), i = 0 .. d/4 - 1. big_vision's table (`tinyvit.vit.sincos_2d`)
    has the same channel order but divides by d/4 - 1: its lowest frequency is exactly 1/10000, MAE's
    stops one step short of it, 1/10000^((d/4 - 1)/(d/4)). (MAE's code calls the column half `emb_h`:
    its meshgrid puts w first.) Computed in float64, returned as float32 (MAE: float32 numpy).
    """
    if dim % 4:
        raise TinyvitError(f"MAE's 2-D sin-cos table needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # [d/4]
    y, x = torch.meshgrid(torch.arange(grid_size, dtype=torch.float64),
                          torch.arange(grid_size, dtype=torch.float64), indexing="ij")
    x = rearrange(x, "gh gw -> (gh gw) 1") * omega  # [(gh gw), d/4]
    y = rearrange(y, "gh gw -> (gh gw) 1") * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).float()


# ---------------------------------------------------------------------------------------------
# Masking, patches, loss.
# ---------------------------------------------------------------------------------------------


def kept_tokens(num_patches: int, mask_ratio: float) -> int:
    """int(L * (1 - mask_ratio)), MAE's count of visible patches."""
    return int(num_patches * (1 - mask_ratio))


def random_masking(x: torch.Tensor, mask_ratio: float, generator: Optional[torch.Generator] = None):
    """Per-image random masking by shuffling (`random_masking` of models_mae.py).

    x [b, L, d] -> (visible [b, keep, d], mask [b, L] with 1 = hidden and 0 = visible, ids_restore [b, L]).
    Each image sorts its own uniform noise; the patches with the `keep` smallest values stay, in that
    shuffled order. ids_restore is the inverse permutation: gathering with it puts a sequence in the
    shuffled order back into patch order. A generator (on the CPU) makes the masks reproducible.
    """
    b, L, d = x.shape
    keep = kept_tokens(L, mask_ratio)
    noise = torch.rand(b, L, generator=generator).to(x.device) if generator is not None else torch.rand(b, L, device=x.device)
    ids_shuffle = noise.argsort(dim=1)  # ascending: small noise is kept, large is removed
    ids_restore = ids_shuffle.argsort(dim=1)
    visible = x.gather(1, repeat(ids_shuffle[:, :keep], "b k -> b k d", d=d))
    mask = torch.ones(b, L, device=x.device)
    mask[:, :keep] = 0
    mask = mask.gather(1, ids_restore)  # back in patch order
    return visible, mask, ids_restore


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """[b, c, H, W] -> [b, (gh gw), (p1 p2 c)]: MAE's `nchpwq -> nhwpqc` order, tinyvit's patch order."""
    return rearrange(imgs, "b c (gh p1) (gw p2) -> b (gh gw) (p1 p2 c)", p1=p, p2=p)


def unpatchify(x: torch.Tensor, p: int, c: int) -> torch.Tensor:
    g = math.isqrt(x.shape[1])
    return rearrange(x, "b (gh gw) (p1 p2 c) -> b c (gh p1) (gw p2)", gh=g, p1=p, p2=p, c=c)


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """norm_pix_loss: each patch to zero mean, unit variance (torch.var: unbiased, as MAE)."""
    mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE per patch, averaged over the hidden patches only (mask 1); visible patches count for nothing."""
    per_patch = ((pred - target) ** 2).mean(dim=-1)  # [b, L]
    return (per_patch * mask).sum() / mask.sum()


# ---------------------------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------------------------


class MaskedAutoencoder(nn.Module):
    """MAE around `encoder` (a tinyvit VisionTransformer), with a light decoder.

    forward(imgs) -> (loss, pred [b, L, p*p*c], mask [b, L]). The decoder is sized by decoder_dim,
    decoder_depth and decoder_heads (MAE's released models: 512, 8, 16; small models want far less).
    Building it re-initialises the encoder as MAE does (`initialize_weights`).
    """

    def __init__(self, encoder: VisionTransformer, decoder_dim: int = 128, decoder_depth: int = 2,
                 decoder_heads: int = 4, mask_ratio: float = 0.75, norm_pix_loss: bool = False):
        super().__init__()
        cfg = encoder.cfg
        problems = []
        if cfg.patch_embed not in ("conv", "linear"):
            problems.append(f"patch_embed={cfg.patch_embed!r} sees beyond its patch, so visible tokens would carry "
                            f"pixels of the hidden ones; pretrain with patch_embed='conv' or 'linear'")
        if cfg.distilled:
            problems.append("distilled=True: MAE's encoder has no distillation token")
        if cfg.token_learner_tokens:
            problems.append("token_learner_tokens > 0: the decoder needs one token per patch")
        if cfg.fc_norm:
            problems.append("fc_norm=True: MAE pretrains with the final norm on every token; choose fc_norm "
                            "when fine-tuning")
        keep = kept_tokens(cfg.grid_size**2, mask_ratio)
        if not 0 <= mask_ratio < 1 or not 0 < keep < cfg.grid_size**2:
            problems.append(f"mask_ratio={mask_ratio}: of {cfg.grid_size**2} patches {keep} would stay visible; "
                            f"at least one must be visible and one hidden")
        if problems:
            raise TinyvitError("MAE: " + "; ".join(problems))
        self.encoder, self.mask_ratio, self.norm_pix_loss = encoder, mask_ratio, norm_pix_loss
        self.patch_size, self.in_channels = cfg.patch_size, cfg.in_channels
        prefix = encoder.num_prefix_tokens
        try:
            dec = ViTConfig(image_size=cfg.image_size, patch_size=cfg.patch_size, in_channels=cfg.in_channels,
                            num_classes=0, dim=decoder_dim, depth=decoder_depth, num_heads=decoder_heads,
                            mlp_dim=4 * decoder_dim, norm_eps=cfg.norm_eps, act=cfg.act, kernels=cfg.kernels,
                            pos_embed="sincos", class_token=cfg.class_token, pool="cls" if cfg.class_token else "mean")
        except ValueError as e:
            raise TinyvitError(f"MAE decoder (decoder_dim={decoder_dim}, decoder_depth={decoder_depth}, "
                               f"decoder_heads={decoder_heads}): {e}") from None
        self.decoder_cfg = dec
        self.decoder_embed = nn.Linear(cfg.dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        table = F.pad(mae_sincos_2d(cfg.grid_size, decoder_dim), (0, 0, prefix, 0))  # zero row for the class token
        self.register_buffer("decoder_pos_embed", table[None], persistent=False)
        self.decoder_blocks = nn.Sequential(*[Block(dec) for _ in range(decoder_depth)])
        self.decoder_norm = SwitchableLayerNorm(decoder_dim, eps=cfg.norm_eps)
        self.decoder_pred = nn.Linear(decoder_dim, cfg.patch_size**2 * cfg.in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAE's `initialize_weights`: sin-cos positions (fixed), xavier_uniform for every Linear and
        for the patch projection seen as a matrix, normal(0.02) tokens, LayerNorm (1, 0). The patch
        conv's bias keeps PyTorch's default, as in MAE (its `_init_weights` touches Linear only)."""
        enc = self.encoder
        if isinstance(enc.pos_embed, nn.Parameter):
            table = F.pad(mae_sincos_2d(enc.cfg.grid_size, enc.cfg.dim), (0, 0, enc.num_prefix_tokens, 0))
            with torch.no_grad():
                enc.pos_embed.copy_(table[None])
            enc.pos_embed.requires_grad_(False)  # fixed while pretraining; fine-tuning trains it
        w = enc.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.data.view(w.shape[0], -1))
        if enc.cls_token is not None:
            nn.init.normal_(enc.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_encoder(self, imgs: torch.Tensor, generator: Optional[torch.Generator] = None):
        """imgs -> (latent [b, p + keep, d], mask [b, L], ids_restore [b, L]): the encoder on the visible
        patches only (positions added before masking, the class token after, as MAE)."""
        enc = self.encoder
        enc.check_input(imgs)
        p = enc.num_prefix_tokens
        pos = enc.pos_embed.to(imgs.dtype)
        x = enc.patch_embed(imgs) + pos[:, p:]  # [b, L, d]
        x, mask, ids_restore = random_masking(x, self.mask_ratio, generator)
        if enc.cls_token is not None:
            cls = enc.cls_token + pos[:, :1]
            x = torch.cat([repeat(cls, "1 1 d -> b 1 d", b=x.shape[0]), x], dim=1)
        x = enc.pos_drop(x)
        return enc.norm(enc.run_blocks(x)), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent [b, p + keep, d] -> predicted pixels of every patch [b, L, p1*p2*c]."""
        p = self.encoder.num_prefix_tokens
        x = self.decoder_embed(latent)  # [b, p + keep, dd]
        b, L = ids_restore.shape
        masks = repeat(self.mask_token, "1 1 dd -> b n dd", b=b, n=L - (x.shape[1] - p))
        patches = torch.cat([x[:, p:], masks], dim=1)  # shuffled order: visible first, then hidden
        patches = patches.gather(1, repeat(ids_restore, "b n -> b n dd", dd=x.shape[-1]))  # patch order
        x = torch.cat([x[:, :p], patches], dim=1) + self.decoder_pos_embed.to(x.dtype)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, p:]

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        target = patchify(imgs, self.patch_size)
        return normalize_patches(target) if self.norm_pix_loss else target

    def forward(self, imgs: torch.Tensor, generator: Optional[torch.Generator] = None):
        latent, mask, ids_restore = self.forward_encoder(imgs, generator)
        pred = self.forward_decoder(latent, ids_restore)
        return mae_loss(pred, self.target(imgs), mask), pred, mask

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, generator: Optional[torch.Generator] = None):
        """(masked input, reconstruction with the visible patches pasted back, original), each
        [b, c, H, W] in the input's normalisation. With norm_pix_loss the predictions are per-patch
        normalised: they are mapped back with each patch's own mean and variance (as MAE's demo does)."""
        _, pred, mask = self(imgs, generator)
        p, c = self.patch_size, self.in_channels
        patches = patchify(imgs, p)
        if self.norm_pix_loss:
            mean, var = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        hidden = mask[..., None]  # [b, L, 1]
        masked = unpatchify(patches * (1 - hidden), p, c)
        pasted = unpatchify(patches * (1 - hidden) + pred * hidden, p, c)
        return masked, pasted, imgs


# ---------------------------------------------------------------------------------------------
# From pretrained encoder to classifier.
# ---------------------------------------------------------------------------------------------


def finetune_model(encoder: VisionTransformer, num_classes: int, wanted: dict, changes: dict) -> VisionTransformer:
    """The pretrained encoder as a classifier of `num_classes`, MAE's fine-tuning model (`models_vit.py`).

    wanted: the architecture the command line asks for (preset config + overrides); its weight-shaping
    fields (ARCHITECTURE) must be the encoder's. changes: config fields to set (pool, fc_norm, drop_path,
    dropout, ...). Without a pool in them, MAE's default applies: global average pooling of the patch
    tokens into a new LayerNorm (`fc_norm`), the encoder's final `norm` dropped. The head is new,
    trunc_normal(std=2e-5) as main_finetune.py initialises it.
    """
    cfg = encoder.cfg.to_dict()
    differ = [f"{k}: pretrained {cfg.get(k)!r}, asked {wanted[k]!r}" for k in ARCHITECTURE
              if k in wanted and wanted[k] != cfg.get(k)]
    if differ:
        raise TinyvitError("the pretrained encoder does not have the architecture asked for (--model, --override): "
                           + "; ".join(differ))
    changes = dict(changes)
    if "pool" not in changes and "fc_norm" not in changes:
        changes.update(pool="mean", fc_norm=True)  # MAE's global_pool=True
    new = dict(cfg, **{k: v for k, v in changes.items() if k not in ARCHITECTURE}, num_classes=num_classes)
    model = VisionTransformer(ViTConfig(**new))
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith(("head.", "head_dist."))}
    if model.cfg.fc_norm and not encoder.cfg.fc_norm:
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}  # MAE: del self.norm
    missing, unexpected = model.load_state_dict(state, strict=False)
    fresh = ("head.", "head_dist.", "fc_norm.")
    if unexpected or any(not k.startswith(fresh) for k in missing):
        raise TinyvitError(f"the pretrained encoder does not fit: missing {missing}, unexpected {unexpected}")
    if isinstance(model.head, nn.Linear):
        nn.init.trunc_normal_(model.head.weight, std=2e-5)
        nn.init.zeros_(model.head.bias)
    model.preprocess = encoder.preprocess
    return model
