"""--compile: the modules the trainer builds under torch.compile give the eager logits and, after one
step's backward, the eager gradients. fp32, and inductor may reorder sums: logits within rtol 1e-4,
atol 1e-5; each parameter's gradient within 1e-4 of the eager one relative to its L2 norm (a
ResNet's BatchNorm backward amplifies rounding in single elements)."""
import pytest
import torch
import torch.nn.functional as F

from tinyvit import ResNet, ResNetConfig, VisionTransformer, ViTConfig, freeze, trainer
from tinyvit.processes import Dist

TOL = dict(rtol=1e-4, atol=1e-5)


def models():
    vit = VisionTransformer(ViTConfig(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2, mlp_dim=64, num_classes=10))
    resnet = ResNet(ResNetConfig(layers=(1, 1, 1, 1), num_classes=10))
    return [(vit, "last", 16, 3), (resnet, "all", 64, 8)]


@pytest.mark.parametrize("index", [0, 1], ids=["vit-last", "resnet-all"])
def test_compiled_logits_and_gradients_equal_eager(index):
    torch.manual_seed(0)
    model, mode, size, batch = models()[index]
    twin = type(model)(model.cfg)
    twin.load_state_dict(model.state_dict())
    eager, split = freeze.apply(model, mode), freeze.apply(twin, mode)
    train_net, eval_net = trainer.build_networks(split, Dist(), torch.device("cpu"), compile_=True)
    assert train_net is not split and eval_net is not split
    x, y = torch.randn(batch, 3, size, size), torch.arange(batch)

    eager.train(), train_net.train()
    a, b = eager(eager.prefix(x)), train_net(split.prefix(x))
    torch.testing.assert_close(b, a, **TOL)
    F.cross_entropy(a, y).backward()
    F.cross_entropy(b, y).backward()
    grads = {n: p.grad for n, p in split.named_parameters() if p.requires_grad}
    for n, p in eager.named_parameters():
        if p.requires_grad:
            error = (grads[n] - p.grad).norm() / p.grad.norm().clamp(min=1e-12)
            assert error < 1e-4, (n, error.item())

    eager.eval(), eval_net.eval()
    with torch.no_grad():
        torch.testing.assert_close(eval_net(split.prefix(x)), eager(eager.prefix(x)), **TOL)


def test_compile_is_a_runtime_flag():
    from tinyvit import finetune

    cfg, given = finetune.parse_args(["--compile"])
    assert cfg.compile and "compile" in finetune.RUNTIME_FIELDS
