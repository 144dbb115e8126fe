"""Running sums on the device: the one accumulator of training epochs, validation passes and loss terms.

A step adds to tensors that stay on the device, so counting costs no host sync; the sums become plain
numbers once, at the end of an epoch or a pass, summed over the processes of a torchrun job on the
way. Scalars are float64, a matrix (a confusion matrix) int64.
"""
from __future__ import annotations

import torch


class Sums:
    """Named sums on `device`: `Sums(device, ("loss_sum", "count"), confusion=(10, 10))`."""

    def __init__(self, device: torch.device, names: tuple = (), **matrices: tuple):
        self.device = device
        self.values = {name: torch.zeros((), dtype=torch.float64, device=device) for name in names}
        self.values.update({name: torch.zeros(shape, dtype=torch.int64, device=device) for name, shape in matrices.items()})

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.values[name]

    def add(self, **terms) -> None:
        """sums[name] += value for each term (a tensor, detached from the graph, or a number)."""
        for name, value in terms.items():
            self.values[name] += value.detach() if isinstance(value, torch.Tensor) else value

    def load(self, numbers: dict) -> None:
        """The scalars from plain numbers (a checkpoint's), the names not given at zero."""
        for name, t in self.values.items():
            t.fill_(float(numbers.get(name, 0.0)) if t.ndim == 0 else 0)

    def total(self) -> dict:
        """{name: the sum over all processes}: scalars as Python floats, matrices as tensors on the
        device. The running sums themselves are left as they were (a mid-epoch checkpoint reads them)."""
        scalars = [n for n, t in self.values.items() if t.ndim == 0]
        stacked = torch.stack([self.values[n] for n in scalars]) if scalars else None
        matrices = {n: t.clone() for n, t in self.values.items() if t.ndim}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for t in ([stacked] if stacked is not None else []) + list(matrices.values()):
                torch.distributed.all_reduce(t)
        numbers = dict(zip(scalars, stacked.tolist())) if stacked is not None else {}
        return {name: numbers[name] if name in numbers else matrices[name] for name in self.values}
