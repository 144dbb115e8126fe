"""Issue 36: a study runs its runs one after another in one process (tinyvit/study.py run_inline), so
nothing a run sets up may outlive it: not memory, Python objects, threads, open files, exit or signal
handlers, logging handlers, figures, nor the autograd state."""
import json
import subprocess
import sys

RUNS, WARM_UP = 40, 5
SCRIPT = """
import atexit, contextlib, gc, io, json, logging, os, signal, sys, threading, warnings
import torch
from tinyvit import finetune, pretrain

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))

def state():
    plt = sys.modules.get("matplotlib.pyplot")
    loggers = [logging.root, *(l for l in logging.Logger.manager.loggerDict.values() if isinstance(l, logging.Logger))]
    return {"rss": rss_mib(), "objects": len(gc.get_objects()), "threads": threading.active_count(),
            "fds": len(os.listdir("/proc/self/fd")), "atexit": atexit._ncallbacks(),
            "figures": len(plt.get_fignums()) if plt else 0, "log handlers": sum(len(l.handlers) for l in loggers),
            "warning filters": len(warnings.filters), "SIGINT": repr(signal.getsignal(signal.SIGINT)),
            "SIGTERM": repr(signal.getsignal(signal.SIGTERM)), "anomaly": torch.is_anomaly_enabled(),
            "grad": torch.is_grad_enabled(), "threads (torch)": torch.get_num_threads()}

out, runs = sys.argv[1], int(sys.argv[2])
vit = ["--model", "vit_tiny_patch16_224", "--weights", "none", "--image-size", "16", "--override",
       "patch_size=4,dim=16,depth=1,num_heads=2,mlp_dim=32", "--dataset", "digits", "--limit-train", "64",
       "--limit-val", "32", "--batch-size", "32", "--num-workers", "0"]
for i in range(runs):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # as study.run_inline
        if i % 4 == 3:  # a pretraining run now and then, as a study with --pretrain makes them
            code = pretrain.main(["--method", "mae", *vit[:2], *vit[4:8], "--dataset", "digits", "--limit-train", "64",
                                  "--batch-size", "32", "--decoder-dim", "16", "--decoder-depth", "1",
                                  "--decoder-heads", "2", "--num-workers", "0", "--epochs", "1", "--out", f"{out}/p{i}"])
        else:
            code = finetune.main(vit + ["--recipe", "scratch", "--mixup", "0", "--cutmix", "0", "--epochs", "2",
                                        "--seed", str(i % 3), "--out", f"{out}/r{i}"])
    assert code == 0, code
    gc.collect()
    print(json.dumps(state()), flush=True)
"""


def test_many_runs_in_one_process_leave_nothing_behind(tmp_path):
    """40 tiny runs (30 finetune, 10 MAE pretraining) in one process. After 5 runs of warm-up (imports,
    caches that fill once), resident memory grows by under 24 MiB over the 35 runs after it (about
    0.7 MiB a run, less than one copy of the 16-px digits the runs load), Python's live objects by under
    2,000 (an einops recipe cache fills per new shape, up to its bound), and everything else is exactly as it was."""
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(RUNS)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    states = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(states) == RUNS
    first, last = states[WARM_UP - 1], states[-1]
    assert last["rss"] - first["rss"] < 24, [round(s["rss"]) for s in states]
    assert last["objects"] - first["objects"] < 2000, [s["objects"] for s in states]
    for key in first.keys() - {"rss", "objects"}:
        assert {s[key] for s in states[WARM_UP - 1:]} == {first[key]}, (key, [s[key] for s in states])
