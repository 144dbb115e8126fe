"""Argument and input checks the models share (tinyvit/vit.py, tinyvit/resnet.py).

Each fails early with one line that names the field, the index or the dtype, instead of a
TypeError or a shape mismatch deep inside a forward pass.
"""
from __future__ import annotations

import numbers

import torch


def is_int(value) -> bool:
    """An integer, and not a bool (True is an int to Python, never a size here)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(cfg, name: str, minimum: int) -> None:
    """A config field that must be an integer of at least `minimum`."""
    value = getattr(cfg, name)
    if not is_int(value) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{type(cfg).__name__}.{name}={value!r}; expected {what}")


def check_input_dtype(x: torch.Tensor, param: torch.Tensor) -> None:
    """Images must be floating point, of the parameters' dtype unless autocast casts them (a bf16
    or fp16 model takes its own dtype; under torch.autocast any float but float64, which autocast
    leaves alone, is cast to what each op needs)."""
    autocast = torch.is_autocast_enabled(x.device.type) and x.dtype != torch.float64
    if x.is_floating_point() and (x.dtype == param.dtype or autocast):
        return
    hint = ("normalised float pixels, not raw ones: model.preprocess.eval_transform() turns a PIL image "
            "into the tensor these weights expect" if not x.is_floating_point() else
            f"convert the images with x.to({param.dtype}) (model.preprocess.eval_transform() gives float32) "
            f"or the model with model.to({x.dtype}), or run under torch.autocast")
    raise ValueError(f"expected {param.dtype} images (the dtype of this model's parameters), got {x.dtype}; {hint}")


def take_indices(n: int, indices) -> list[int]:
    """timm's feature_take_indices: None -> all n, an int k -> the last k, a list -> those
    (negative counts from the end); sorted, as the blocks produce them."""
    if indices is None:
        indices = n
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"indices={indices}: the last-n count must be 1 to {n} (the number of blocks)")
        return list(range(n - indices, n))
    take = []
    for i in indices:
        j = n + i if i < 0 else i
        if not 0 <= j < n:
            raise ValueError(f"indices: block {i} is out of range for {n} blocks")
        take.append(j)
    if not take:
        raise ValueError("indices: an empty list; name at least one block")
    return sorted(set(take))
