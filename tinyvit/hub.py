"""Official weights for the presets: where each comes from, how it is cached and verified.

A plain table from preset name to one source (the URLs and hub ids of timm's `default_cfgs` in
vision_transformer.py and deit.py, and torchvision's weight enums in models/resnet.py):
- a URL whose file name ends in `-<first hex digits of its sha256>.pth` (torchvision, DeiT): downloaded
  once into `torch.hub.get_dir()/checkpoints` by `torch.hub.download_url_to_file`, which checks the
  hash before moving the file into place; a cached file is checked again before use;
- a Hugging Face hub id (timm's copies of the Google AugReg weights): `huggingface_hub.hf_hub_download`
  caches under the HF cache and verifies the download against the hub's sha256.

`create_model(name, pretrained=True)` is tinyvit's public way to build a preset, and the one call
that may fetch: without weights it builds the preset (tinyvit/presets.py); with
them `pretrained_model` loads the file with the preset's preprocessing through
`tinyvit.convert.load_pretrained`. Nothing here runs at import.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Union
from urllib.parse import urlparse

from torch import nn

from tinyvit.errors import TinyvitError
from tinyvit.presets import preset, preset_model
from tinyvit.rundir import sha256_file

_TORCHVISION = "https://download.pytorch.org/models/"
_DEIT = "https://dl.fbaipublicfiles.com/deit/"

# preset name -> {"url": ...} or {"hf": repo id}. timm's default tag of each architecture
# (vit_base_patch16_224 is timm's augreg2 re-fine-tune; vit_huge is the in21k backbone, no head).
HUB = {
    "vit_tiny_patch16_224": {"hf": "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"},
    "vit_small_patch16_224": {"hf": "timm/vit_small_patch16_224.augreg_in21k_ft_in1k"},
    "vit_base_patch16_224": {"hf": "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"},
    "vit_base_patch32_224": {"hf": "timm/vit_base_patch32_224.augreg_in21k_ft_in1k"},
    "vit_large_patch16_224": {"hf": "timm/vit_large_patch16_224.augreg_in21k_ft_in1k"},
    "vit_huge_patch14_224": {"hf": "timm/vit_huge_patch14_224.orig_in21k"},
    "deit_tiny_patch16_224": {"url": _DEIT + "deit_tiny_patch16_224-a1311bcf.pth"},
    "deit_small_patch16_224": {"url": _DEIT + "deit_small_patch16_224-cd65a155.pth"},
    "deit_base_patch16_224": {"url": _DEIT + "deit_base_patch16_224-b5f2ef4d.pth"},
    "deit_tiny_distilled_patch16_224": {"url": _DEIT + "deit_tiny_distilled_patch16_224-b40b3cf7.pth"},
    "deit_small_distilled_patch16_224": {"url": _DEIT + "deit_small_distilled_patch16_224-649709d9.pth"},
    "deit_base_distilled_patch16_224": {"url": _DEIT + "deit_base_distilled_patch16_224-df68dfff.pth"},
    "resnet18": {"url": _TORCHVISION + "resnet18-f37072fd.pth"},
    "resnet34": {"url": _TORCHVISION + "resnet34-b627a593.pth"},
    "resnet50": {"url": _TORCHVISION + "resnet50-11ad3fa6.pth"},  # IMAGENET1K_V2, torchvision's DEFAULT
    # FDViT: AMD's Hugging Face ports (the hub checks their sha256). Their key layout could not be read
    # (tinyvit/keymaps.py FDVIT_HF is an assumption): a file in another layout is refused by name, key by
    # key. The release's Google Drive links (in the README of github.com/AMD-AIG-AIMA/AMD_FDViT) state no hash and are
    # share pages, not files: download one by hand and pass its path (the official layout is confirmed).
    "fdvit_ti": {"hf": "amd/FDViT_ti", "file": "pytorch_model.bin"},
    "fdvit_s": {"hf": "amd/FDViT_s", "file": "pytorch_model.bin"},
    "fdvit_b": {"hf": "amd/FDViT_b", "file": "pytorch_model.bin"},
}

HF_FILENAME = "model.safetensors"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")  # as torch.hub.HASH_REGEX, at least 8 digits


def url_cache_path(url: str) -> Path:
    """Where torch.hub keeps a downloaded file: <torch.hub.get_dir()>/checkpoints/<file name>."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def hash_prefix(url: str) -> str:
    m = _HASH_IN_NAME.search(os.path.basename(urlparse(url).path))
    if m is None:
        raise ValueError(f"{url}: the file name carries no sha256 prefix ('name-<hex>.ext')")
    return m.group(1)


class DownloadError(TinyvitError, RuntimeError):
    """Official weights that could not be fetched; the message says how to get them by hand."""


def fetch_url(name: str, url: str) -> Path:
    """The cached file for `url`, downloaded (and sha256-checked) when absent or corrupt."""
    import torch.hub

    dst, prefix = url_cache_path(url), hash_prefix(url)
    if dst.is_file():
        if sha256_file(dst).startswith(prefix):
            return dst
        warnings.warn(f"{dst}: cached file fails its sha256 check (expected {prefix}...); downloading it again")
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Writes to a temporary file, checks the hash, then moves it into place: never half a file at dst.
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=prefix, progress=True)
    except Exception as e:
        raise DownloadError(
            f"could not download the official weights of {name!r} from {url} ({type(e).__name__}: {e}). "
            f"Offline? Download that file yourself and put it at {dst} (keep its name; its sha256 must "
            f"start with {prefix}), or pass pretrained='path/to/file'"
        ) from e
    return dst


def fetch_hf(name: str, repo_id: str, filename: str = HF_FILENAME) -> Path:
    """The cached hub file, downloaded by huggingface_hub when absent (it verifies the sha256)."""
    import huggingface_hub

    cached = huggingface_hub.try_to_load_from_cache(repo_id, filename)
    if isinstance(cached, str):
        return Path(cached)
    try:
        return Path(huggingface_hub.hf_hub_download(repo_id, filename))
    except Exception as e:
        from huggingface_hub import constants

        raise DownloadError(
            f"could not download the official weights of {name!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
            f"Offline? On a connected machine run `hf download {repo_id} {filename}` (or fetch "
            f"https://huggingface.co/{repo_id}/resolve/main/{filename}) and copy the Hugging Face cache to "
            f"{constants.HF_HUB_CACHE}, or pass pretrained='path/to/{filename}'"
        ) from e


def fetch(name: str) -> Path:
    """The local path of a preset's official weights, downloading them on first use."""
    if name not in HUB:
        raise TinyvitError(f"no official weights for {name!r}; presets with weights: {', '.join(HUB)}")
    entry = HUB[name]
    if "url" in entry:
        return fetch_url(name, entry["url"])
    return fetch_hf(name, entry["hf"], entry.get("file", HF_FILENAME))


def pretrained_model(
    name: str,
    pretrained: Union[bool, str, os.PathLike],
    num_classes: int = 1000,
    image_size: int | None = None,
    **overrides,
) -> nn.Module:
    """Preset `name` with weights: its official ones (pretrained=True) or a local checkpoint of the
    same architecture in any format load_pretrained reads (pretrained="path"). The preset's
    preprocessing comes with it; a num_classes other than the file's gives a new head (warned)."""
    from tinyvit.convert import load_pretrained

    if pretrained is True:
        path = fetch(name)
    elif isinstance(pretrained, (str, os.PathLike)):
        path = Path(pretrained)
    else:
        raise TypeError(f"pretrained must be True or a path, got {pretrained!r}")
    return load_pretrained(path, num_classes=num_classes, image_size=image_size, name=name, **overrides)


def create_model(
    name: str,
    num_classes: int = 1000,
    image_size: int | None = None,
    pretrained: Union[bool, str, os.PathLike] = False,
    **overrides,
) -> nn.Module:
    """A preset by name, randomly initialised, or with its official weights (`pretrained=True`)
    or a local checkpoint in any format `tinyvit.load_pretrained` reads (`pretrained="path"`).

    `overrides` change ViTConfig / ResNetConfig fields (e.g. drop_path=0.1, pool="mean").
    """
    preset(name)  # an unknown name fails here, before any download
    if pretrained:
        return pretrained_model(name, pretrained, num_classes=num_classes, image_size=image_size, **overrides)
    return preset_model(name, num_classes=num_classes, image_size=image_size, **overrides)
