"""tinyvit.kernels: fused attention and LayerNorm in Triton, each beside its plain-PyTorch reference.

    attention(q, k, v, scale=None, backend="auto")         q, k, v: [B, H, N, D] -> [B, H, N, D]
    layer_norm(x, weight, bias, eps=1e-6, backend="auto")  x: [..., N] -> [..., N]

backend="triton" forces the kernels (and raises if they cannot run), "torch" PyTorch's fused ops
(F.scaled_dot_product_attention, F.layer_norm), "reference" the plain formulas (to read and to test
against), and "auto" takes the kernels on CUDA tensors (on CPU tensors too when TRITON_INTERPRET=1 was set
before import) and PyTorch's fused ops otherwise. attention takes fewer queries than keys: q [B, H, N_q, D]
against k, v [B, H, N_k, D]. Each op is layered kernel -> launcher (a torch.library operator,
torch.ops.tinyvit.*) -> autograd.Function -> nn.Module; read tinyvit/kernels/attention.py and
tinyvit/kernels/layernorm.py top to bottom.

Importing is cheap and device-free: it works without CUDA, and without triton installed (PyTorch's
fused ops then serve backend="auto").
"""
from ._dispatch import HAS_TRITON, INTERPRETER
from .attention import AttentionFunction, FusedAttention, attention, attention_reference
from .layernorm import FusedLayerNorm, LayerNormFunction, layer_norm, layer_norm_reference

__all__ = [
    "HAS_TRITON",
    "INTERPRETER",
    "attention",
    "attention_reference",
    "AttentionFunction",
    "FusedAttention",
    "layer_norm",
    "layer_norm_reference",
    "LayerNormFunction",
    "FusedLayerNorm",
]
