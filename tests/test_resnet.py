"""The ResNet baseline computes exactly what torchvision's does, with the same names."""
import pytest
import torch
import torchvision

import tinyvit
from tinyvit.resnet import ResNet, ResNetConfig


def randomise_(model: torch.nn.Module) -> None:
    """Random weights everywhere, BatchNorm affine parameters and running statistics included."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn_like(m.running_mean) * 0.1)
                m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)
                m.weight.add_(1.0)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_same_outputs_as_torchvision(name):
    ref = getattr(torchvision.models, name)()
    randomise_(ref)
    ref.eval()
    model = tinyvit.create_model(name).eval()
    model.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)


def test_bottleneck_puts_the_stride_in_the_3x3():
    model = tinyvit.create_model("resnet50")
    block = model.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert block.conv2.kernel_size == (3, 3)
    assert model.layer1[0].downsample is not None  # 64 -> 256 channels even without a stride


def test_feature_shapes():
    model = tinyvit.create_model("resnet18").eval()
    x = torch.randn(2, 3, 224, 224)
    assert model.stem(x).shape == (2, 64, 56, 56)
    assert model.forward_features(x).shape == (2, 512, 7, 7)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 512)


@pytest.mark.parametrize("shape,match", [
    ((2, 1, 64, 64), r"\[B, 3, H, W\], got shape \(2, 1, 64, 64\)"),
    ((2, 3, 16, 16), r"at least 32x32 pixels .* got 16x16"),
])
def test_bad_input_is_named(shape, match):
    with pytest.raises(ValueError, match=match):
        ResNet(ResNetConfig())(torch.randn(*shape))


def test_bad_config():
    with pytest.raises(ValueError, match="expected 'basic' or 'bottleneck'"):
        ResNetConfig(block="dense")
    with pytest.raises(ValueError, match="4 stages"):
        ResNetConfig(layers=(2, 2, 2))
