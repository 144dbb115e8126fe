"""`ViTConfig`, the Vision Transformer's settings (tinyvit/vit.py builds the model from them), and
the rules a config must meet, as one table read top to bottom.

Each rule is (field, rule, message): `rule(value, cfg)` is True for a valid value, and the message
(a str.format template over `value`, the config `c` and `last_block`) names the field, what it got
and what it expects, in one line. The rules run in order and the first one broken raises
ValueError, so a later rule may rely on an earlier one: sizes come first, so that no rule divides
by a zero patch, and a zero image size or a negative class count cannot build a model that
silently has no patches or no head.
"""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from tinyvit.checks import is_int
from tinyvit.locality import check_conv_stem

KERNELS = ("auto", "triton", "torch", "reference")
CHOICES = {
    "patch_embed": ("conv", "linear", "spt", "conv_stem"),
    "pos_embed": ("learned", "sincos"),
    "pool": ("cls", "mean", "none"),
    "act": ("gelu", "gelu_tanh"),
    "kernels": KERNELS,
}
SIZES = ("patch_size", "image_size", "in_channels", "dim", "depth", "num_heads", "mlp_dim")


@dataclass
class ViTConfig:
    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    num_classes: int = 1000  # 0: no head, forward returns the pooled features
    dim: int = 768  # token width D
    depth: int = 12  # number of blocks L
    num_heads: int = 12  # H; head width is dim // num_heads
    mlp_dim: int = 3072  # hidden width of the MLP (4 * dim in every official preset)
    qkv_bias: bool = True
    patch_embed: str = "conv"  # "conv" (strided Conv2d) or "linear" (Linear over flattened patches)
    # ... or a small-data embedding (tinyvit/locality.py): "spt" (Shifted Patch Tokenization, Lee et al.
    # 2021) or "conv_stem" (3x3 stride-2 convs with BatchNorm and ReLU, then a 1x1 conv; Xiao et al. 2021)
    pos_embed: str = "learned"  # "learned" or "sincos" (fixed 2-D sin-cos, not a parameter)
    class_token: bool = True
    # "cls" (the class token), "mean" (mean of the patch tokens) or "none" (no pooling: forward_head
    # returns every token, timm's global_pool=''; for feature extraction, set by reset_classifier)
    pool: str = "cls"
    # Where the final LayerNorm sits. False: normalise every token, then pool (the paper, big_vision).
    # True: pool, then normalise the pooled vector (timm's `fc_norm`, global_pool='avg', as MAE's
    # fine-tuning does); `norm` is then the identity and the LayerNorm is `fc_norm`, as in timm.
    fc_norm: bool = False
    distilled: bool = False  # DeiT: a distillation token and a second head
    pre_logits: Optional[int] = None  # Google in21k files: Linear(dim, pre_logits) + tanh before the head
    # Every official ViT trained with 1e-6 (the flax default). HF config.json files say 1e-12; the
    # converter honours it for HF files so logits equal transformers' (norm_eps=1e-6 matches timm).
    norm_eps: float = 1e-6
    act: str = "gelu"  # "gelu" (exact erf, as timm/torchvision/HF) or "gelu_tanh" (as the original JAX)
    dropout: float = 0.0  # after the position embedding, in the MLP and after the attention projection
    attn_dropout: float = 0.0  # on the attention probabilities (forces the PyTorch attention path)
    drop_path: float = 0.0  # stochastic depth, linearly increasing to this rate in the last block
    # "auto": Triton kernels on CUDA, PyTorch's fused ops elsewhere; "triton": always; "torch": never;
    # "reference": the plain formulas of tinyvit.kernels (slow, for reading and testing)
    kernels: str = "auto"
    # TokenLearner v1.1 (tinyvit/token_learner.py): after block token_learner_at (None: the middle one,
    # depth // 2 - 1) the patch tokens become token_learner_tokens learned ones; 0 turns it off.
    token_learner_tokens: int = 0
    token_learner_at: Optional[int] = None
    # Locality Self-Attention (Lee et al. 2021): learnable temperature per head, no attention to oneself
    lsa: bool = False

    def __post_init__(self):
        check(self)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @property
    def token_learner_block(self) -> int:
        """The block after which TokenLearner reduces the tokens (meaningful when it is on)."""
        return self.depth // 2 - 1 if self.token_learner_at is None else self.token_learner_at

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + int(self.distilled)

    def to_dict(self) -> dict:
        return asdict(self)


def _positive_int(v, c) -> bool:
    return is_int(v) and v >= 1


def _probability(v, c) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and 0.0 <= v < 1.0


def _conv_stem_fits(c) -> bool:
    check_conv_stem(c.dim, c.patch_size)  # raises its own message: ConvStem checks the same (tinyvit/locality.py)
    return True


def _token_learner_placed(v, c) -> bool:
    return v >= 0 and not (v and not 0 <= c.token_learner_block < c.depth)


Rule = tuple[str, Callable[[object, ViTConfig], bool], str]

RULES: list[Rule] = [
    *[(name, _positive_int, f"ViTConfig.{name}={{value!r}}; expected a positive integer") for name in SIZES],
    ("num_classes", lambda v, c: is_int(v) and v >= 0, "ViTConfig.num_classes={value!r}; expected an integer >= 0"),
    ("pre_logits", lambda v, c: v is None or _positive_int(v, c), "ViTConfig.pre_logits={value!r}; expected a positive integer"),
    ("image_size", lambda v, c: v >= c.patch_size,
     "ViTConfig.image_size={value} is smaller than one patch (patch_size={c.patch_size})"),
    *[(name, _probability, f"ViTConfig.{name}={{value!r}}; expected a probability in [0, 1)")
      for name in ("dropout", "attn_dropout", "drop_path")],
    ("norm_eps", lambda v, c: isinstance(v, numbers.Real) and v > 0, "ViTConfig.norm_eps={value!r}; expected a positive number"),
    ("image_size", lambda v, c: v % c.patch_size == 0, "image_size={value} is not a multiple of patch_size={c.patch_size}"),
    ("dim", lambda v, c: v % c.num_heads == 0, "dim={value} is not divisible by num_heads={c.num_heads}"),
    *[(name, lambda v, c, allowed=allowed: v in allowed, f"ViTConfig.{name}={{value!r}}; expected one of {allowed}")
      for name, allowed in CHOICES.items()],
    ("patch_embed", lambda v, c: v != "spt" or c.patch_size >= 2,
     "patch_embed='spt' shifts by half a patch: patch_size must be at least 2"),
    ("patch_embed", lambda v, c: v != "conv_stem" or _conv_stem_fits(c), ""),
    ("lsa", lambda v, c: isinstance(v, bool), "ViTConfig.lsa={value!r}; expected True or False"),
    ("pool", lambda v, c: v != "cls" or c.class_token,
     "pool='cls' needs class_token=True; use pool='mean' without a class token"),
    ("distilled", lambda v, c: not v or c.class_token, "distilled=True (DeiT) needs class_token=True"),
    ("fc_norm", lambda v, c: not (v and c.distilled),
     "fc_norm=True with distilled=True: the DeiT heads read the normalised tokens"),
    ("dim", lambda v, c: c.pos_embed != "sincos" or v % 4 == 0,
     "2-D sin-cos position embedding needs dim divisible by 4, got dim={value}"),
    ("token_learner_tokens", _token_learner_placed,
     "ViTConfig.token_learner_tokens={value}, token_learner_at={c.token_learner_at}: expected tokens >= 0 "
     "and a block index in 0..{last_block}"),
    # Checked whenever given, even with TokenLearner off: a wrong index is a mistake either way.
    ("token_learner_at", lambda v, c: v is None or (is_int(v) and 0 <= v < c.depth),
     "ViTConfig.token_learner_at={value!r}; expected a block index in 0..{last_block}"),
    ("token_learner_tokens", lambda v, c: v < c.grid_size ** 2,
     "ViTConfig.token_learner_tokens={value}: not fewer than the {c.num_patches} patch tokens of a "
     "{c.grid_size}x{c.grid_size} grid, so TokenLearner would reduce nothing; use fewer (the paper learns 8), "
     "or 0 for none"),
]


def check(cfg: ViTConfig) -> None:
    """Raise ValueError with the message of the first rule `cfg` breaks."""
    for field, rule, message in RULES:
        value = getattr(cfg, field)
        if not rule(value, cfg):
            raise ValueError(message.format(value=value, c=cfg, last_block=cfg.depth - 1 if is_int(cfg.depth) else "?"))
