"""Where a run executes: one process or several under torchrun, and stopping cleanly on a signal.

- `init_distributed`: one process per GPU under torchrun (NCCL), or per CPU slot (gloo); `Dist` says
  which one this is. Only rank 0 writes files.
- `StopRequest`: Ctrl-C or SIGTERM asks the loop to stop at the next step boundary, so the saved
  checkpoint is exact.
- `start_workers`: DataLoader workers that leave those signals to the main process and end with
  the loop that reads them.
- `random_state` / `set_random_state`: the RNGs a resume restores.
"""
from __future__ import annotations

import atexit
import os
import random
import signal
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from tinyvit.device import resolve_device


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_flag: str) -> tuple[Dist, torch.device]:
    """One process per GPU under torchrun (it sets WORLD_SIZE, RANK, LOCAL_RANK); NCCL on GPUs, gloo on CPUs."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), resolve_device(device_flag)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_flag, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank), device


class StopRequest:
    """SIGINT (Ctrl-C) or SIGTERM: finish the current step, save a checkpoint, exit 128 + signal.

    Stopping between steps, never inside one, is what makes the saved state exact: an interrupt
    in the middle of optimizer.step() would leave some parameters updated and others not. A second
    Ctrl-C raises KeyboardInterrupt at once.
    """

    def __init__(self, log: Callable[[str], None]):
        self.signum: Optional[int] = None
        self.log = log
        self._previous = {}

    def __enter__(self):
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker inherited this handler: the main process decides
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        self.log(f"\n{signal.Signals(signum).name}: stopping after this step to save a checkpoint (again to quit at once)")

    @property
    def requested(self) -> bool:
        return self.signum is not None


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def start_workers(loader: torch.utils.data.DataLoader) -> Iterator:
    """The loader's batches, from DataLoader workers that leave SIGINT and SIGTERM to the main
    process and that end with the loop that reads them.

    Ctrl-C, `timeout`, Slurm and Kubernetes signal the whole process group. PyTorch's workers die
    of a SIGTERM that does not come from their parent, and the main process then fails with
    "DataLoader worker ... killed by signal" before it can save. So workers ignore both
    signals, and while they start (fork) the signals are held back: one that arrives meanwhile
    waits in the main process, and in a worker is dropped when `_ignore_stop_signals` runs.

    When the loop stops reading, the workers are shut down at once: a run that fails (a corrupt
    image, a NaN) leaves the loader's iterator referenced by the exception's traceback, so in a
    process that goes on (a notebook, a study, a test session) the workers would otherwise live,
    with every file descriptor they inherited, until that traceback is collected.
    """
    if loader.num_workers == 0:
        yield from loader
        return
    global _exit_hook_registered
    if not _exit_hook_registered:  # after multiprocessing's own exit handler, so it runs before it
        atexit.register(_kill_leftover_workers)
        _exit_hook_registered = True
    loader.worker_init_fn = _ignore_stop_signals
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        batches = iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    try:
        yield from batches
    finally:
        batches._shutdown_workers()  # what the iterator's __del__ calls; a second call does nothing


def _ignore_stop_signals(worker_id: int) -> None:
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


_exit_hook_registered = False


def _kill_leftover_workers() -> None:
    """At exit, SIGKILL the daemonic workers of a loader that was never shut down (an exception
    kept its iterator alive). multiprocessing's exit handler would SIGTERM and then join them, and
    since they ignore SIGTERM the interpreter would wait forever."""
    import multiprocessing

    leftover = [p for p in multiprocessing.active_children() if p.daemon]
    if leftover and threading.current_thread() is threading.main_thread():
        # PyTorch's SIGCHLD handler would report each of these as "DataLoader worker ... killed by
        # signal", a traceback after the run's own one-line error: they are killed on purpose.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for p in leftover:
        p.kill()


def random_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
