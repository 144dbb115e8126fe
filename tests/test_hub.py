"""Official weights, offline: the table, the caches (torch.hub's and Hugging Face's), the error when
a download fails, and `create_model(pretrained=...)`. No test touches the network: the download
functions are replaced by ones that raise, or that copy a local file, and the caches live in tmp_path."""
from __future__ import annotations

import hashlib
import re
import shutil
from urllib.error import URLError

import huggingface_hub
import pytest
import torch
import torch.hub
from convert_fixtures import no_warnings, perturb, rel_err
from huggingface_hub import constants
from safetensors.torch import save_file

import tinyvit
from tinyvit import hub
from tinyvit.presets import PRESETS


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Empty caches in tmp_path, and every download raises unless a test says otherwise."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))

    def no_network(*args, **kwargs):
        raise URLError("network is unreachable (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)


def test_table_covers_every_preset():
    assert set(hub.HUB) == set(PRESETS)
    for name, entry in hub.HUB.items():
        if name.startswith("fdvit_"):  # AMD's Hugging Face ports, a pickled state dict (tinyvit/hub.py)
            assert entry == {"hf": f"amd/FDViT_{name[6:]}", "file": "pytorch_model.bin"}
            continue
        (kind, where), = entry.items()
        if kind == "url":
            assert where.startswith(("https://download.pytorch.org/models/", "https://dl.fbaipublicfiles.com/deit/"))
            assert name in where and len(hub.hash_prefix(where)) >= 8
        else:
            assert kind == "hf" and where.startswith(f"timm/{name}.")


def synthetic_resnet18(tmp_path):
    import torchvision

    ref = perturb(torchvision.models.resnet18())
    src = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), src)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    return ref, src, f"https://download.pytorch.org/models/resnet18-{sha[:8]}.pth"


def test_url_offline_error(tmp_path):
    with pytest.raises(hub.DownloadError) as err:
        tinyvit.create_model("resnet18", pretrained=True)
    msg = str(err.value)
    url = hub.HUB["resnet18"]["url"]
    assert url in msg and str(tmp_path / "torch_hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert "pretrained='path/to/file'" in msg and "unreachable" in msg
    assert isinstance(err.value.__cause__, URLError)


def test_url_cache_hit(tmp_path, monkeypatch):
    ref, src, url = synthetic_resnet18(tmp_path)
    monkeypatch.setitem(hub.HUB, "resnet18", {"url": url})
    dst = hub.url_cache_path(url)
    assert dst.parent == tmp_path / "torch_hub" / "checkpoints"
    dst.parent.mkdir(parents=True)
    shutil.copy(src, dst)
    with no_warnings():
        model = tinyvit.create_model("resnet18", pretrained=True)  # downloads would raise
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) < 1e-4
    assert model.preprocess == PRESETS["resnet18"]["preprocess"] and not model.training


def test_url_download_and_corrupt_cache(tmp_path, monkeypatch):
    ref, src, url = synthetic_resnet18(tmp_path)
    monkeypatch.setitem(hub.HUB, "resnet18", {"url": url})
    calls = []

    def fake_download(u, dst, hash_prefix=None, progress=True):
        calls.append((u, dst, hash_prefix))
        shutil.copy(src, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    dst = hub.url_cache_path(url)
    dst.parent.mkdir(parents=True)
    dst.write_bytes(b"half a download")
    with pytest.warns(UserWarning, match="fails its sha256 check"):
        model = tinyvit.create_model("resnet18", pretrained=True, num_classes=1000)
    assert calls == [(url, str(dst), re.search(r"-([0-9a-f]{8})\.", url).group(1))]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) < 1e-4
    tinyvit.create_model("resnet18", pretrained=True)  # now cached and verified: no second download
    assert len(calls) == 1


def tiny_official_vit():
    """A random model with exactly vit_tiny_patch16_224's architecture (5.7M parameters)."""
    from timm.models.vision_transformer import VisionTransformer

    return perturb(VisionTransformer(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3))


def test_hf_offline_error():
    with pytest.raises(hub.DownloadError) as err:
        tinyvit.create_model("vit_tiny_patch16_224", pretrained=True)
    msg = str(err.value)
    repo = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    assert repo in msg and f"https://huggingface.co/{repo}/resolve/main/model.safetensors" in msg
    assert constants.HF_HUB_CACHE in msg and "pretrained=" in msg


def test_hf_cache_hit(tmp_path):
    ref = tiny_official_vit()
    repo = hub.HUB["vit_tiny_patch16_224"]["hf"]
    cache = tmp_path / "hf_cache" / ("models--" + repo.replace("/", "--"))
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text("0123abcd")
    (cache / "snapshots" / "0123abcd").mkdir(parents=True)
    save_file(ref.state_dict(), cache / "snapshots" / "0123abcd" / "model.safetensors")
    with no_warnings():
        model = tinyvit.create_model("vit_tiny_patch16_224", pretrained=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) < 1e-4
    assert model.preprocess == PRESETS["vit_tiny_patch16_224"]["preprocess"]


def test_pretrained_path(tmp_path):
    from timm.models.deit import VisionTransformerDistilled

    ref = perturb(VisionTransformerDistilled(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3))
    torch.save({"model": ref.state_dict()}, tmp_path / "deit.pth")
    with pytest.warns(UserWarning, match="head of 1000 classes was dropped"):
        model = tinyvit.create_model("deit_tiny_distilled_patch16_224", pretrained=str(tmp_path / "deit.pth"),
                                     num_classes=10, image_size=160, drop_path=0.1)
    assert model.head.out_features == 10 and model.head_dist.out_features == 10
    assert model.cfg.image_size == 160 and model.cfg.drop_path == 0.1
    assert model.preprocess == PRESETS["deit_tiny_distilled_patch16_224"]["preprocess"].with_image_size(160)
    with pytest.raises(Exception, match="preset 'deit_tiny_patch16_224'.*distilled"):
        tinyvit.create_model("deit_tiny_patch16_224", pretrained=tmp_path / "deit.pth")
    with pytest.raises(TypeError, match="pretrained must be True or a path"):
        hub.pretrained_model("resnet18", 3)
    with pytest.raises(ValueError, match="no official weights"):
        hub.fetch("vit_gigantic")
