"""Presets match the published architectures, and carry their weights' preprocessing."""
import pytest
import torch

import tinyvit
from tinyvit.presets import PRESETS

# Published counts (1000 classes): timm's and torchvision's models at these settings, counted.
PUBLISHED = {
    "vit_base_patch16_224": 86_567_656,
    "vit_tiny_patch16_224": 5_717_416,
    "deit_tiny_distilled_patch16_224": 5_910_800,
    "deit_base_distilled_patch16_224": 87_338_192,
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def reference_model(name):
    """The defining library's model, built without weights, on the meta device (no memory)."""
    with torch.device("meta"):
        if name.startswith("resnet"):
            import torchvision

            return getattr(torchvision.models, name)()
        timm = pytest.importorskip("timm")
        return timm.create_model(name, pretrained=False, num_classes=1000)


# FDViT is in neither timm nor torchvision: tests/test_fdvit.py checks its counts exactly.
@pytest.mark.parametrize("name", [n for n, p in PRESETS.items() if p["arch"] != "fdvit"])
def test_preset_matches_reference_library(name):
    with torch.device("meta"):
        model = tinyvit.create_model(name)
    ref = reference_model(name)
    assert n_params(model) == n_params(ref)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert ours == theirs  # same names, same shapes: official files load without renaming
    if name in PUBLISHED:
        assert n_params(model) == PUBLISHED[name]


def test_preprocessing_differs_by_family():
    google = tinyvit.create_model("vit_tiny_patch16_224").preprocess
    deit = tinyvit.create_model("deit_tiny_patch16_224").preprocess
    tv = tinyvit.create_model("resnet18").preprocess
    r50 = PRESETS["resnet50"]["preprocess"]
    assert google.mean == google.std == (0.5, 0.5, 0.5)
    assert deit.mean == tv.mean == (0.485, 0.456, 0.406)
    assert google.interpolation == deit.interpolation == "bicubic" and tv.interpolation == "bilinear"
    assert deit.resize_size == 256 and tv.resize_size == 256 and r50.resize_size == 232


def test_eval_transform_produces_normalised_square():
    from PIL import Image

    pre = tinyvit.create_model("vit_tiny_patch16_224", image_size=64).preprocess
    assert pre.image_size == 64 and pre.resize_size == round(248 * 64 / 224)
    img = Image.new("RGB", (100, 80), color=(255, 0, 128))
    x = pre.eval_transform()(img)
    assert x.shape == (3, 64, 64)
    torch.testing.assert_close(x[:, 32, 32], torch.tensor([1.0, -1.0, 128 / 255 * 2 - 1]), atol=1e-2, rtol=0)
    y = pre.train_transform()(img)
    assert y.shape == (3, 64, 64)


def test_create_model_options():
    model = tinyvit.create_model("deit_tiny_distilled_patch16_224", num_classes=7, image_size=96, drop_path=0.1)
    assert model.cfg.image_size == 96 and model.cfg.num_classes == 7 and model.cfg.distilled
    assert model.pos_embed.shape == (1, 2 + 36, 192)
    assert model.eval()(torch.randn(1, 3, 96, 96)).shape == (1, 7)
    r = tinyvit.create_model("resnet18", num_classes=0)
    assert r.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 512)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'vit_giant'.*vit_base_patch16_224"):
        tinyvit.create_model("vit_giant")


def test_import_is_cheap_and_gpu_free():
    import subprocess
    import sys

    code = (
        "import sys, time; t = time.time(); import tinyvit; dt = time.time() - t; "
        "import torch; assert not torch.cuda.is_initialized(); "
        "heavy = [m for m in ('timm', 'transformers', 'matplotlib', 'torchvision', 'huggingface_hub') if m in sys.modules]; "
        "print(dt, heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    seconds, heavy = out.split(" ", 1)
    assert heavy.strip() == "[]", f"import tinyvit pulled in {heavy}"
