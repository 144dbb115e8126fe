"""Checkpoint files, read and written safely: tinyvit's own layout out, every official file in.

`save_pretrained(model, directory)` writes tinyvit's layout, a directory holding model.safetensors
(the state dict) and config.json (architecture, config and preprocessing). `read_checkpoint(source)`
reads a weight file, or a directory in Hugging Face, timm hub or tinyvit layout, into a `Checkpoint`:
the tensors as stored, the JSON files beside them, and the family its key names belong to.

A checkpoint never runs code. Pickles go through `torch.load(weights_only=True)`, .npz files through
`allow_pickle=False`, and safetensors cannot hold code at all. The format is sniffed from the first
bytes, not the extension: a `.bin` may be a zip archive or a legacy pickle. In a run directory of
tinyvit.finetune the bytes are first checked against the run's manifest (tinyvit/rundir.py). Every
failure is one `CheckpointError` naming the file.

This is step 1 of `load_pretrained` (tinyvit/convert.py, whose docstring tells the whole story).
Key names matter here only to recognise the family; the tables that rename each family's keys to
tinyvit's are in tinyvit/keymaps.py, and building and loading the model is in tinyvit/convert.py.
"""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from tinyvit import rundir
from tinyvit.atomic import write_atomic
from tinyvit.errors import MissingFileError, TinyvitError

FORMAT = "tinyvit"
FORMAT_VERSION = 1


class CheckpointError(TinyvitError):
    """A checkpoint that cannot be read, or does not fit the model it describes."""


# ---------------------------------------------------------------------------------------------
# Saving: tinyvit's own layout, a directory with model.safetensors and config.json.
# ---------------------------------------------------------------------------------------------


def arch_of(model: nn.Module) -> str:
    """The architecture name a config.json (and checkpoint.pt) records for this model."""
    arch = getattr(model, "arch", None)
    if not isinstance(arch, str):
        raise TypeError(f"save_pretrained expects a tinyvit VisionTransformer, ResNet or FDViT, got {type(model).__name__}")
    return arch


def save_pretrained(model: nn.Module, directory) -> Path:
    """Write `model.safetensors` (the state dict) and `config.json` (architecture, config and
    preprocessing) into `directory`; `load_pretrained(directory)` rebuilds the same model."""
    from safetensors.torch import save

    arch = arch_of(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # The model says what its inference model is: an FDViT leaves out its training-only decoders.
    model_config, state = model.inference_state()
    # safetensors refuses shared or strided storage: store plain contiguous CPU copies.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    preprocess = getattr(model, "preprocess", None)
    config = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "arch": arch,
        "config": model_config,
        "preprocess": preprocess.to_dict() if preprocess is not None else None,
    }
    # Weights first: a config.json only ever describes weights that are complete on disk.
    write_atomic(directory / "model.safetensors", lambda f: f.write(save(tensors, metadata={"format": "pt"})))
    write_atomic(directory / "config.json", lambda f: f.write((json.dumps(config, indent=2) + "\n").encode()))
    return directory


# ---------------------------------------------------------------------------------------------
# A run's checkpoint.pt: its whole training state, read back for --resume, export and the study.
# ---------------------------------------------------------------------------------------------


class NotRunState(CheckpointError):
    """A file that is no run's checkpoint.pt of the asked format (another pickle, another run's)."""


def read_run_state(path, kind: str = rundir.CHECKPOINT_FORMAT, version: Optional[int] = rundir.CHECKPOINT_VERSION,
                   verify: bool = True) -> dict:
    """The training state a run of `kind` (tinyvit.finetune's, tinyvit.pretrain's) saved in `path`:
    in a run directory first checked against the manifest's SHA-256, then unpickled as tensors and
    plain values only (weights_only), then its format and `version` checked (None: any version).
    verify=False skips the checksum, for a glance at how far a run got, never for what is used."""
    path = Path(path)
    if verify:
        rundir.verify(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise NotRunState(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != kind:
        raise NotRunState(f"{path}: not a {kind} checkpoint")
    if version is not None and state.get("version") != version:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')!r}, expected {version}")
    return state


# ---------------------------------------------------------------------------------------------
# Reading tensors safely. A checkpoint never runs code.
# ---------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    path: Path  # the weight file itself
    tensors: dict  # source key -> tensor, as stored
    family: str = ""  # the key table that reads it (keymaps.FAMILIES), set by detect_family
    wrapper: Optional[str] = None  # "model" / "state_dict": the dict the weights were found under
    config: Optional[dict] = None  # config.json beside the weights (directories only)
    preprocessor: Optional[dict] = None  # Hugging Face preprocessor_config.json


def _read_torch(path: Path) -> object:
    import argparse

    try:
        # The DeiT repository's training checkpoints store their arguments as an argparse.Namespace,
        # a plain attribute bag that runs no code when rebuilt: the one class allowed beyond tensors.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused: this pickle holds objects other than tensors and plain containers, and "
            f"unpickling them could run code. Only weights are loaded (torch.load weights_only=True). "
            f"Re-save just the state dict, or convert it to safetensors. ({e})"
        ) from e
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read this PyTorch checkpoint; truncated or corrupt? ({e})") from e


def _read_npz(path: Path) -> dict:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: torch.from_numpy(np.array(npz[k])) for k in npz.files}
    except Exception as e:
        if isinstance(e, ValueError) and "allow_pickle" in str(e):  # numpy refusing an object array
            raise CheckpointError(f"{path}: refused: this .npz holds pickled objects, not plain arrays ({e})") from e
        raise CheckpointError(f"{path}: cannot read this .npz; truncated or corrupt? ({e})") from e


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read this safetensors file; truncated or corrupt? ({e})") from e


def _unwrap(obj: object, path: Path) -> tuple[dict, Optional[str]]:
    """The state dict inside a loaded pickle: DeiT's release files hold it under 'model', training
    checkpoints under 'state_dict'; nothing else in the file is read."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict), found a {type(obj).__name__}")
    if obj.get("format") == rundir.CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: this is a tinyvit resume checkpoint (a run's training state), not a model; "
                              + _run_hint(path.parent))
    wrapper = None
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), dict):
            obj, wrapper = obj[key], key
            break
    bad = [f"{k!r} ({type(v).__name__})" for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        where = f"under {wrapper!r} " if wrapper else ""
        raise CheckpointError(
            f"{path}: expected a state dict of tensors {where}but found other values: {', '.join(bad[:8])}"
            + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        )
    if obj and all(k.startswith("module.") for k in obj):  # saved from a DistributedDataParallel wrapper
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj), wrapper


def _run_hint(run: Path) -> str:
    """Where the model of a tinyvit.finetune run is. Its checkpoint.pt holds the weights too, but
    not the preprocessing the model is evaluated with nor the class list (classes.json): loading
    it as a bare state dict would guess both, wrongly, so the loader points at the run instead."""
    if (run / "model.safetensors").is_file() and (run / "config.json").is_file():
        return f"load the run directory {run} instead"
    return (f"the run in {run} has not finished (no model.safetensors yet): continue it with "
            f"python -m tinyvit.finetune --out {run} --resume, then load the run directory {run}")


def read_tensors(path) -> tuple[dict, Optional[str]]:
    """Source key -> tensor from one weight file, whatever its extension says.

    The format is sniffed from the first bytes: a zip archive is an .npz if it holds .npy members
    and a PyTorch checkpoint otherwise; safetensors starts with an 8-byte header length and '{';
    a legacy (pre-1.6) PyTorch file with a pickle protocol byte.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(
                f"{path}: a truncated or corrupt zip archive (neither a complete .npz nor a PyTorch checkpoint)"
            ) from e
        if any(n.endswith(".npy") for n in names):
            return _read_npz(path), None
        return _unwrap(_read_torch(path), path)
    if len(head) >= 9 and head[8:9] == b"{":
        return _read_safetensors(path), None
    if head[:1] == b"\x80":
        return _unwrap(_read_torch(path), path)
    raise CheckpointError(
        f"{path}: not a checkpoint: neither a .npz, a safetensors file nor a PyTorch file "
        f"(it starts with {head[:8]!r})"
    )


def _read_json(path: Path) -> dict:
    return rundir.read_json(path, CheckpointError)  # (verified by read_checkpoint already, in a run)


# ---------------------------------------------------------------------------------------------
# The whole read: which family the keys belong to (the one decision about key names made here, so
# that a Checkpoint says what it is), then the weights and the JSON files beside them.
# ---------------------------------------------------------------------------------------------


def detect_family(ckpt: Checkpoint) -> str:
    """Which key table of tinyvit/keymaps.py reads this checkpoint, from a few unmistakable keys."""
    keys = set(ckpt.tensors)
    if ckpt.config is not None and ckpt.config.get("format") == FORMAT:
        return "tinyvit"
    if any(k.startswith(("params/", "opt/target/params/")) for k in keys):
        raise CheckpointError(
            f"{ckpt.path}: a big_vision checkpoint ('params/...' keys); its position embedding has no "
            f"class-token slot and its layout is not supported. Use the vit_jax / AugReg .npz files"
        )
    if any(k.endswith("embedding/kernel") or k.startswith(("Transformer/", "opt/target/Transformer/")) for k in keys):
        return "google"
    if "pools.0.conv.weight" in keys:  # FDViT's official release (pools.{s}: its FD layers)
        return "fdvit"
    if "fdvit.pools.0.conv.weight" in keys:  # the Hugging Face ports amd/FDViT_* (layout unconfirmed, keymaps.py)
        return "fdvit_hf"
    if any("embeddings.patch_embeddings.projection." in k for k in keys):
        return "hf"
    if "conv_proj.weight" in keys:
        return "torchvision"
    if "patch_embed.proj.weight" in keys:
        return "timm"
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        return "resnet"
    sample = ", ".join(repr(k) for k in sorted(keys)[:5])
    raise CheckpointError(
        f"{ckpt.path}: not a checkpoint of a known family ({len(keys)} tensors, e.g. {sample}); expected "
        f"a Google .npz, a Hugging Face ViT/DeiT, a timm/DeiT, a torchvision ViT or ResNet, or an FDViT state dict"
    )


def _as_its_directory(path: Path) -> Path:
    """A weight file of a tinyvit directory (save_pretrained's, or a run's) stands for that directory:
    its config.json says the architecture and the preprocessing the model was evaluated with, which
    the file alone would leave to a guess (a timm state dict's 248/224 bicubic crop for a run that
    resized 32 px straight). A file of a run that has no such config.json yet is refused, naming it."""
    if not path.is_file():
        return path
    run = rundir.run_of(path)  # a file of a run: the bytes the run wrote, whichever file it is
    if path.name == "checkpoint.pt":  # _unwrap says what a run's checkpoint.pt is
        return path
    folder, config = path.parent, path.parent / "config.json"
    if run is not None and config.is_file():
        rundir.verify(config)  # what decides below
    try:
        ours = config.is_file() and json.loads(config.read_text()).get("format") == FORMAT
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        ours = False
    if ours and path.name == "model.safetensors":
        return folder
    if (folder / rundir.MANIFEST).is_file():
        raise CheckpointError(f"{path}: a file of a tinyvit.finetune run; "
                              + (f"load the run directory {folder}" if ours else _run_hint(folder)))
    if ours and path.suffix in (".safetensors", ".bin", ".pt", ".pth"):
        raise CheckpointError(f"{path}: not the weights of the tinyvit model in {folder} (model.safetensors); "
                              f"load the directory {folder}")
    return path


def _weights_of(source: Path) -> Path:
    """The weight file of a directory in Hugging Face / timm hub / tinyvit layout."""
    found = [source / n for n in ("model.safetensors", "pytorch_model.bin") if (source / n).is_file()]
    if not found:
        if (source / "checkpoint.pt").is_file():  # a tinyvit.finetune run that has not finished
            raise CheckpointError(f"{source}: no model.safetensors yet; " + _run_hint(source))
        sharded = [n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
                   if (source / n).is_file()]
        hint = f" (sharded checkpoints, {sharded[0]}, are not supported)" if sharded else ""
        raise CheckpointError(
            f"{source}: a directory without weights: expected model.safetensors or pytorch_model.bin{hint}"
        )
    if not (source / "config.json").is_file():
        # Every layout read here keeps its preprocessing and architecture in config.json, and
        # every writer (save_pretrained, tinyvit.export, a finished run) writes it after the
        # weights: weights alone are a write that did not finish, and guessing the rest would
        # load them with another family's resizing.
        raise CheckpointError(
            f"{source}: weights without config.json (a save or export that did not finish?); nothing was "
            f"loaded. Load {found[0]} itself to read it with its family's default preprocessing"
        )
    return found[0]  # safetensors first: it cannot hold code


def read_checkpoint(source) -> Checkpoint:
    """A weight file, or a directory in Hugging Face / timm hub / tinyvit layout."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path to a checkpoint file or directory, got {type(source).__name__}")
    source = Path(source)
    if not source.exists():
        raise MissingFileError(f"{source}: no such checkpoint file or directory")
    try:  # in a run directory: every file read is first checked against the run's manifest
        source = _as_its_directory(source)
        weights = _weights_of(source) if source.is_dir() else source
        for path in (weights, source / "config.json", source / "preprocessor_config.json") if source.is_dir() else ():
            if path.is_file():
                rundir.verify(path)
    except (rundir.ChecksumError, rundir.RunDirError) as e:
        raise CheckpointError(str(e)) from None
    config = _read_json(source / "config.json") if source.is_dir() else None
    preprocessor = None
    if source.is_dir() and (source / "preprocessor_config.json").is_file():
        preprocessor = _read_json(source / "preprocessor_config.json")
    tensors, wrapper = read_tensors(weights)
    if not tensors:
        raise CheckpointError(f"{weights}: holds no tensors")
    ckpt = Checkpoint(weights, tensors, wrapper=wrapper, config=config, preprocessor=preprocessor)
    ckpt.family = detect_family(ckpt)
    return ckpt
