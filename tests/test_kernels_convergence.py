"""A tiny ViT trained a few steps with the Triton kernels and with the PyTorch references: same losses.

Per-op tests compare one call at a time; this catches what they miss (a gradient that is right alone
but wrong in context, a layout the model produces that the op tests did not, state that leaks between
calls). On CPU the kernels run in the Triton interpreter, so the model is tiny; its 17 tokens
(16 patches + the class token) leave a masked tail in every attention block.
"""
import copy

import pytest
import torch

pytest.importorskip("triton")

from tinyvit import kernels  # noqa: E402
from tinyvit.vit import VisionTransformer, ViTConfig  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not kernels.INTERPRETER:
    pytest.skip("no GPU and TRITON_INTERPRET=1 was not set before import", allow_module_level=True)

STEPS = 6
LOSS_RTOL = 1e-5  # the two paths agree to ~1e-7 here (fp32 kernels match the references to ~1e-6 per op)


def fused_nodes(loss):
    """Names of the fused autograd nodes in loss's graph (proof the Triton path ran)."""
    seen, stack, names = set(), [loss.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return names & {"AttentionFunctionBackward", "LayerNormFunctionBackward"}


def train(model, images, labels):
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    losses = []
    for _ in range(STEPS):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss)
    return losses


def test_tiny_vit_trains_the_same_with_kernels_on_and_off():
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2, mlp_dim=64, num_classes=5)
    reference = VisionTransformer(cfg).set_kernels("torch").to(DEVICE)
    fused = copy.deepcopy(reference).set_kernels("triton")
    images = torch.randn(2, 3, 16, 16, device=DEVICE)
    labels = torch.tensor([1, 3], device=DEVICE)

    want = train(reference, images, labels)
    got = train(fused, images, labels)

    assert fused_nodes(got[0]) == {"AttentionFunctionBackward", "LayerNormFunctionBackward"}
    assert not fused_nodes(want[0])
    assert want[-1] < 0.7 * want[0], "the reference did not learn: the comparison would be vacuous"
    for step, (a, b) in enumerate(zip(got, want)):
        assert abs(a.item() - b.item()) <= LOSS_RTOL * abs(b.item()), f"step {step}: {a.item()} vs {b.item()}"
    # Parameters are not compared one by one: the key bias has an exactly-zero gradient (softmax ignores
    # a constant added to every score of a row), and AdamW's m / sqrt(v) turns either path's 1e-9
    # rounding noise there into full-size, different steps. The losses are what the model computes.
