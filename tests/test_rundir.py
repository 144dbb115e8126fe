"""tinyvit/rundir.py through tinyvit.finetune: --force removes only a run's own files, checksums catch
changed bytes, one run per directory, SIGTERM saves a checkpoint, resumed data is the same data, and
the errors on the way are one clear line."""
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import tinyvit
from tinyvit import data, evaluate, finetune, predict, rundir
from tinyvit.checkpoint import read_run_state
from image_fixtures import make_image_folder

TINY = ["--model", "vit_tiny_patch16_224", "--weights", "none", "--image-size", "32",
        "--override", "patch_size=8,dim=32,depth=2,num_heads=2,mlp_dim=64"]
SMALL = ["--dataset", "synthetic", "--limit-train", "32", "--limit-val", "16", "--batch-size", "16",
         "--num-workers", "0", "--no-progress", "--epochs", "1"]


def tiny_run(out, *extra):
    return finetune.main(TINY + SMALL + ["--out", str(out), *extra])


def flip_a_byte(path, where=-100):
    blob = bytearray(path.read_bytes())
    blob[where] ^= 0x01
    path.write_bytes(bytes(blob))


def error(argv, main=finetune.main) -> str:
    with pytest.raises(SystemExit) as err:
        main(argv)
    message = str(err.value)
    assert "Traceback" not in message and "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------
# --force removes only what a run wrote.
# ---------------------------------------------------------------------------------------------


def test_a_directory_that_is_not_a_run_is_refused_even_with_force(tmp_path):
    home = tmp_path / "home"  # --out ~ --force once removed ~/.cache and ~/config.json
    (home / ".cache" / "pip").mkdir(parents=True)
    (home / ".cache" / "pip" / "wheel").write_text("someone else's")
    (home / "config.json").write_text("{}")
    for extra in ([], ["--force"]):
        message = error(TINY + SMALL + ["--out", str(home), *extra])
        assert f"--out {home} holds files that are not from a tinyvit run (.cache, config.json)" in message
        assert "--force" not in message  # no advice to force a directory that is not a run
    assert (home / ".cache" / "pip" / "wheel").read_text() == "someone else's" and (home / "config.json").exists()
    assert sorted(p.name for p in home.iterdir()) == [".cache", "config.json"]  # no lock left behind


def test_force_removes_the_files_the_run_recorded_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    assert tiny_run(out) == 0
    manifest = json.loads((out / rundir.MANIFEST).read_text())
    assert sorted(manifest["files"]) == sorted(set(finetune.OUTPUTS) - {rundir.MANIFEST})
    for name, entry in manifest["files"].items():
        assert entry == {"sha256": rundir.sha256_file(out / name), "bytes": (out / name).stat().st_size}, name
    assert sorted(p.name for p in out.iterdir()) == sorted(finetune.OUTPUTS)  # no lock, cache or temp left

    (out / ".cache").mkdir()  # not ours: the feature cache is .tinyvit-feature-cache
    (out / ".cache" / "keep").write_text("x")
    (out / "notes.txt").write_text("mine")
    message = error(TINY + SMALL + ["--out", str(out), "--force"])
    assert "holds a tinyvit run and files it did not write (.cache, notes.txt)" in message
    assert "--force removes only a run's own files" in message
    assert (out / "checkpoint.pt").exists() and (out / ".cache" / "keep").exists()
    assert "pass --resume" in error(TINY + SMALL + ["--out", str(out)])

    (out / "notes.txt").unlink()
    (out / ".cache" / "keep").unlink()
    (out / ".cache").rmdir()
    (out / rundir.CACHE_DIR).mkdir()  # the feature cache and a staging folder a kill -9 left behind
    (out / rundir.CACHE_DIR / "train.npy").write_bytes(b"stale")
    (out / f"{rundir.STAGING}abc").mkdir()
    before = rundir.sha256_file(out / "checkpoint.pt")
    assert tiny_run(out, "--force", "--seed", "1") == 0
    assert rundir.sha256_file(out / "checkpoint.pt") != before
    assert sorted(p.name for p in out.iterdir()) == sorted(finetune.OUTPUTS)


def test_a_run_that_failed_before_its_first_checkpoint_is_recoverable(tmp_path, monkeypatch):
    out = tmp_path / "run"
    ce = torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **kw: ce(*a, **kw) * float("nan"))
    message = error(TINY + SMALL + ["--out", str(out)])
    assert "loss became NaN/Inf in epoch 1" in message
    assert "no checkpoint was saved before it" in message and "holds the last good state" not in message
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["classes.json", rundir.MANIFEST]

    message = error(TINY + SMALL + ["--out", str(out)])
    assert message.endswith("holds a run that stopped before its first checkpoint: --force removes the 1 file "
                            "of that run (classes.json) and starts over")
    message = error(["--out", str(out), "--resume"])
    assert "stopped before its first checkpoint, so there is nothing to continue; --force removes" in message
    assert tiny_run(out, "--force") == 0
    assert (out / "checkpoint.pt").is_file()


# ---------------------------------------------------------------------------------------------
# Nothing outside the run: names read from the manifest are plain names, links are never followed.
# ---------------------------------------------------------------------------------------------


def _edit_manifest(out, edit):
    manifest = json.loads((out / rundir.MANIFEST).read_text())
    edit(manifest["files"])
    (out / rundir.MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert tiny_run(out) == 0
    return out


def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("name", ["../outside.txt", "ABSOLUTE", "sub/outside.txt", "..", ".", "", rundir.LOCK,
                                  rundir.MANIFEST, f"{rundir.STAGING}x"])
def test_a_manifest_naming_anything_but_a_plain_file_is_refused_and_nothing_is_removed(finished_run, tmp_path, name):
    out = _copy_run(finished_run, tmp_path / "run")
    outside = tmp_path / "outside.txt"
    outside.write_text("not the run's")
    (out / "sub").mkdir() if name.startswith("sub/") else None
    (out / "sub" / "outside.txt").write_text("x") if name.startswith("sub/") else None
    name = str(outside) if name == "ABSOLUTE" else name
    digest = rundir.sha256_file(outside)
    _edit_manifest(out, lambda files: files.update({name: {"sha256": digest, "bytes": outside.stat().st_size}}))
    before = sorted(p.name for p in out.iterdir())
    for extra in (["--force"], ["--resume", "--epochs", "2"], []):
        message = error(TINY + SMALL + ["--out", str(out), *extra])
        assert f"files entry {name!r}:" in message and "nothing was removed" in message
    assert outside.read_text() == "not the run's"
    assert sorted(p.name for p in out.iterdir()) == before  # not even the lock left behind
    with pytest.raises(tinyvit.CheckpointError, match="files entry"):
        tinyvit.load_pretrained(out)


@pytest.mark.parametrize("entry, problem", [
    ("0" * 64, "expected an object with sha256 and bytes, found str"),
    ({"bytes": 3}, "sha256=None; expected 64 hexadecimal digits"),
    ({"sha256": "abc", "bytes": 3}, "sha256='abc'; expected 64 hexadecimal digits"),
    ({"sha256": "0" * 64, "bytes": "3"}, "bytes='3'; expected a whole number of bytes"),
    ({"sha256": "0" * 64, "bytes": True}, "bytes=True; expected a whole number of bytes"),
    ({"sha256": "0" * 64, "bytes": 3, "replacing": 7}, "replacing=7; expected 64 hexadecimal digits"),
])
def test_a_malformed_manifest_entry_is_one_line_naming_it(finished_run, tmp_path, entry, problem):
    out = _copy_run(finished_run, tmp_path / "run")
    _edit_manifest(out, lambda files: files.update({"checkpoint.pt": entry}))
    for extra in (["--force"], ["--resume", "--epochs", "2"]):
        message = error(TINY + SMALL + ["--out", str(out), *extra])
        assert f"files entry 'checkpoint.pt': {problem}" in message
    assert (out / "checkpoint.pt").is_file()


@pytest.mark.parametrize("kind", ["folder", "link", "fifo"])
def test_force_removes_only_regular_files_and_never_follows_a_link(finished_run, tmp_path, kind):
    out = _copy_run(finished_run, tmp_path / "run")
    outside = tmp_path / "outside.pt"
    outside.write_bytes((out / "checkpoint.pt").read_bytes())  # even with the bytes the manifest recorded
    (out / "checkpoint.pt").unlink()
    if kind == "folder":
        (out / "checkpoint.pt").mkdir()
        (out / "checkpoint.pt" / "mine").write_text("x")
    elif kind == "link":
        (out / "checkpoint.pt").symlink_to(outside)
    else:
        os.mkfifo(out / "checkpoint.pt")
    for extra in (["--force"], ["--resume", "--epochs", "2"]):
        message = error(TINY + SMALL + ["--out", str(out), *extra])
        assert f"--out {out}: checkpoint.pt is not the regular file the run wrote" in message
    assert outside.is_file() and os.path.lexists(out / "checkpoint.pt") and (out / "model.safetensors").is_file()
    if kind == "link":
        with pytest.raises(rundir.ChecksumError, match="not a regular file"):
            rundir.verify(out / "checkpoint.pt")  # a reader does not follow it either
    with pytest.raises(rundir.RunDirError, match="not a regular file"):
        rundir.remove_own_file(out, "checkpoint.pt")
    with pytest.raises(rundir.RunDirError, match="not a plain file name"):
        rundir.remove_own_file(out, "../outside.pt")
    assert outside.is_file()


@pytest.mark.parametrize("kind", ["symlink", "dangling", "hardlink", "fifo", "folder"])
def test_a_lock_that_is_not_a_regular_file_of_its_own_is_refused(tmp_path, kind):
    out = tmp_path / "run"
    out.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    lock = out / rundir.LOCK
    if kind == "symlink":
        lock.symlink_to(target)
    elif kind == "dangling":
        lock.symlink_to(tmp_path / "created-by-the-lock")
    elif kind == "hardlink":
        os.link(target, lock)
    elif kind == "fifo":
        os.mkfifo(lock)
    else:
        lock.mkdir()
    message = error(TINY + SMALL + ["--out", str(out)])
    assert message.startswith(f"tinyvit.finetune: error: {lock}: not a regular file")
    assert target.read_text() == "keep me" and not (tmp_path / "created-by-the-lock").exists()
    assert os.path.lexists(lock) and sorted(p.name for p in out.iterdir()) == [rundir.LOCK]


def test_resume_writes_only_into_the_out_it_was_given(finished_run, tmp_path):
    """checkpoint.pt records the run's --out; a copied or edited run resumed elsewhere must not write there."""
    state = read_run_state(finished_run / "checkpoint.pt")
    stored = dict(state["config"], out=str(tmp_path / "elsewhere"), epochs=2)
    cfg, given = finetune.parse_args(["--out", str(tmp_path / "here"), "--resume", "--epochs", "2"])
    assert finetune.resumed_config(cfg, given, stored).out_dir() == tmp_path / "here"
    cfg, given = finetune.parse_args(["--resume", "--epochs", "2"])  # --out by default: the default folder
    assert finetune.resumed_config(cfg, given, stored).out_dir() == cfg.out_dir()


# ---------------------------------------------------------------------------------------------
# Checksums: what is read is what the run wrote.
# ---------------------------------------------------------------------------------------------


def test_changed_bytes_are_refused_by_every_reader_and_named(tmp_path, capsys):
    out = tmp_path / "run"
    assert tiny_run(out) == 0
    image = tmp_path / "x.png"
    data.Synthetic(5)[3][0].save(image)

    flip_a_byte(out / "checkpoint.pt", where=len((out / "checkpoint.pt").read_bytes()) // 2)
    message = error(["--out", str(out), "--resume", "--epochs", "2"])
    assert f"{out / 'checkpoint.pt'}: corrupt or changed since the run wrote it" in message
    flip_a_byte(out / "checkpoint.pt", where=len((out / "checkpoint.pt").read_bytes()) // 2)  # restored

    flip_a_byte(out / "model.safetensors")  # a weight, not the header: this file still loads
    with pytest.raises(tinyvit.CheckpointError, match="model.safetensors: corrupt or changed"):
        tinyvit.load_pretrained(out)
    with pytest.raises(tinyvit.CheckpointError, match="model.safetensors: corrupt or changed"):
        tinyvit.load_pretrained(out / "model.safetensors")
    assert "model.safetensors: corrupt or changed" in error(
        ["--model-dir", str(out), "--dataset", "synthetic", "--num-workers", "0"], evaluate.main)
    assert "model.safetensors: corrupt or changed" in error([str(image), "--model-dir", str(out)], predict.main)
    flip_a_byte(out / "model.safetensors")

    (out / "classes.json").write_text(json.dumps(list(reversed(data.SYNTHETIC_CLASSES))))
    assert "classes.json: corrupt or changed" in error([str(image), "--model-dir", str(out)], predict.main)

    # A directory written by save_pretrained has no manifest: nothing to check it against, it loads.
    plain = tmp_path / "plain"
    tinyvit.save_pretrained(tinyvit.create_model("vit_tiny_patch16_224", num_classes=3, depth=1), plain)
    flip_a_byte(plain / "model.safetensors")
    assert tinyvit.load_pretrained(plain).cfg.num_classes == 3


def test_a_write_cut_between_record_and_rename_verifies_either_version(tmp_path, monkeypatch):
    d = tmp_path / "run"
    run = rundir.RunDir.open(d, log=lambda m: None)
    run.start(fresh=True, dataset={})
    run.write("checkpoint.pt", lambda f: f.write(b"epoch 1"))

    replace = os.replace

    def killed(src, dst):
        if os.path.basename(dst) == "checkpoint.pt":
            raise KeyboardInterrupt  # as if the process died right before the rename
        return replace(src, dst)  # the manifest's own write

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        run.write("checkpoint.pt", lambda f: f.write(b"epoch 2"))
    monkeypatch.undo()
    run.lock.release()
    rundir.verify(d / "checkpoint.pt")  # the old version is still there, and still good
    (d / "checkpoint.pt").write_bytes(b"epoch 2")
    rundir.verify(d / "checkpoint.pt")  # as if the rename had happened
    (d / "checkpoint.pt").write_bytes(b"epoch 1")

    again = rundir.RunDir.open(d, log=lambda m: None)
    again.start(fresh=False, dataset={})  # settles the entry on the version that is there
    again.close()
    assert json.loads((d / rundir.MANIFEST).read_text())["files"]["checkpoint.pt"] == {
        "sha256": rundir.sha256_file(d / "checkpoint.pt"), "bytes": 7}
    (d / "checkpoint.pt").write_bytes(b"epoch 2")
    with pytest.raises(rundir.ChecksumError, match="checkpoint.pt: corrupt or changed"):
        rundir.verify(d / "checkpoint.pt")


# ---------------------------------------------------------------------------------------------
# One run per directory.
# ---------------------------------------------------------------------------------------------


def test_a_directory_in_use_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from tinyvit import rundir; "
         "rundir.Lock.acquire(Path(sys.argv[1])); print('locked', flush=True); time.sleep(300)", str(out / rundir.LOCK)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        for extra in ([], ["--resume"]):
            message = error(TINY + SMALL + ["--out", str(out), *extra])
            assert f"--out {out} is in use by process {holder.pid} on {socket.gethostname()}" in message
    finally:
        holder.kill()  # kill -9: the lock file stays behind, naming a process that no longer runs
        holder.wait()
        holder.stdout.close()
    assert json.loads((out / rundir.LOCK).read_text())["pid"] == holder.pid
    capsys.readouterr()
    assert tiny_run(out) == 0
    assert f"taking over the lock of process {holder.pid} on {socket.gethostname()}" in capsys.readouterr().out
    assert not (out / rundir.LOCK).exists()

    # A lock file naming a dead process, written by hand.
    other = tmp_path / "other"
    other.mkdir()
    (other / rundir.LOCK).write_text(json.dumps({"pid": holder.pid, "host": "elsewhere"}))
    logs = []
    run = rundir.RunDir.open(other, log=logs.append)
    assert logs == [f"{other}: taking over the lock of process {holder.pid} on elsewhere, which no longer holds it (the run that wrote it is over)"]
    assert json.loads((other / rundir.LOCK).read_text())["pid"] == os.getpid()
    with pytest.raises(rundir.RunDirError, match=f"in use by process {os.getpid()}"):
        rundir.RunDir.open(other)  # a second open file, even in the same process, is another run
    run.close()
    assert not (other / rundir.LOCK).exists()


# ---------------------------------------------------------------------------------------------
# SIGTERM to the process group.
# ---------------------------------------------------------------------------------------------


def test_workers_left_running_by_an_error_do_not_hang_the_exit():
    """Workers ignore SIGTERM, which is how multiprocessing ends them at exit: a loader whose iterator
    an exception kept alive must still let the interpreter exit (it hung the test suite once)."""
    script = (
        "import torch\n"
        "from tinyvit.processes import start_workers\n"
        "loader = torch.utils.data.DataLoader(list(range(64)), batch_size=4, num_workers=2)\n"
        "it = start_workers(loader)\n"
        "next(it)\n"
        "print('one batch', flush=True)\n"  # `it` stays alive: its workers are never shut down
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "one batch" in proc.stdout, proc.stderr


def test_sigterm_to_the_process_group_saves_a_checkpoint_and_exits_143(tmp_path):
    out, log = tmp_path / "run", tmp_path / "log.txt"
    argv = TINY + ["--dataset", "synthetic", "--limit-train", "4000", "--limit-val", "16", "--batch-size", "16",
                   "--num-workers", "2", "--no-progress", "--epochs", "50", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "w") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "tinyvit.finetune", *argv], stdout=stdout,
                                stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while "epoch 1/50" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text() + proc.stderr.read()
        time.sleep(0.5)  # into epoch 2, its workers running (or starting)
        os.killpg(proc.pid, signal.SIGTERM)  # what timeout, Slurm and Kubernetes do: the whole group
        stderr = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 143, log.read_text() + stderr
    assert "Traceback" not in stderr and "killed by signal" not in stderr, stderr
    assert "SIGTERM: stopping after this step" in log.read_text()
    rundir.verify(out / "checkpoint.pt")
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] >= 1 and (state["epoch"], state["batches_done"]) != (50, 0)
    assert not (out / rundir.LOCK).exists()


# ---------------------------------------------------------------------------------------------
# The data a resumed run trains on.
# ---------------------------------------------------------------------------------------------


def test_resume_on_other_data_with_the_same_classes_is_refused_unless_allowed(tmp_path, capsys):
    a, b = make_image_folder(tmp_path / "a", 4), make_image_folder(tmp_path / "b", 5)
    out = tmp_path / "run"
    base = TINY + ["--dataset", "imagefolder", "--batch-size", "4", "--num-workers", "0", "--no-progress"]
    assert finetune.main(base + ["--data-dir", str(a), "--epochs", "1", "--out", str(out)]) == 0
    message = error(["--out", str(out), "--resume", "--epochs", "2", "--data-dir", str(b)])
    assert f"--resume: the train and val data of --dataset imagefolder --data-dir {b} is not what the run began with" in message
    assert "pass --allow-data-change" in message
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1  # untouched
    (tmp_path / "a").rename(tmp_path / "moved")  # the same files elsewhere are the same data
    assert finetune.main(["--out", str(out), "--resume", "--epochs", "2", "--data-dir", str(tmp_path / "moved"),
                          "--no-progress"]) == 0
    assert finetune.main(["--out", str(out), "--resume", "--epochs", "3", "--data-dir", str(b),
                          "--allow-data-change", "--no-progress"]) == 0
    assert "--allow-data-change: continuing on changed train and val data" in capsys.readouterr().out
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 3


def test_fingerprints_follow_the_data():
    class Own:
        def fingerprint(self):
            return "v1"

    class Arrays:
        def __init__(self, pixels):
            self.data, self.targets = pixels, [0, 1]

    class Opaque:
        def __init__(self):
            self.transform = lambda x: x

    pixels = np.zeros((2, 4, 4, 3), np.uint8)
    assert rundir.fingerprint(Own()) == "v1"
    assert rundir.fingerprint(Arrays(pixels)) == rundir.fingerprint(Arrays(pixels.copy()))
    changed = pixels.copy()
    changed[1, 2, 3, 0] = 1
    assert rundir.fingerprint(Arrays(pixels)) != rundir.fingerprint(Arrays(changed))
    assert rundir.fingerprint(Arrays(torch.from_numpy(pixels))) is not None  # MNIST keeps a tensor
    assert rundir.fingerprint(data.Synthetic(10, seed=0)) != rundir.fingerprint(data.Synthetic(10, seed=1))
    subset = data.limit(data.Synthetic(10), 5, seed=0)
    assert rundir.fingerprint(subset) not in (None, rundir.fingerprint(data.limit(data.Synthetic(10), 5, seed=1)))
    assert rundir.fingerprint(Opaque()) is None


def test_folder_fingerprints_see_sizes_and_names_not_the_location(tmp_path):
    root = make_image_folder(tmp_path / "a", 2)
    classes = data.ImageFolder.find_classes(root / "train")
    first = rundir.fingerprint(data.ImageFolder(root / "train", classes))
    (root / "train").rename(tmp_path / "elsewhere")
    assert rundir.fingerprint(data.ImageFolder(tmp_path / "elsewhere", classes)) == first
    Image.new("RGB", (40, 40), (0, 0, 0)).save(tmp_path / "elsewhere" / "class0" / "2.png")  # one image more
    assert rundir.fingerprint(data.ImageFolder(tmp_path / "elsewhere", classes)) != first


# ---------------------------------------------------------------------------------------------
# A read-only --out, found before anything is set up.
# ---------------------------------------------------------------------------------------------


def _as_a_plain_user():
    """In the child: root ignores file permissions (CAP_DAC_OVERRIDE); drop that, as an ordinary user has it."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH; prctl(PR_CAPBSET_DROP = 24)
            if libc.prctl(24, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_read_only_out_is_refused_before_the_model_and_data(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for out in (ro, ro / "run"):  # an existing directory, and one that cannot be created
            proc = subprocess.run(
                [sys.executable, "-m", "tinyvit.finetune", *TINY, "--dataset", "imagefolder",
                 "--data-dir", str(tmp_path / "nowhere"), "--out", str(out)],
                capture_output=True, text=True, preexec_fn=_as_a_plain_user, timeout=120,
            )
            assert proc.returncode == 1, proc.stderr
            assert proc.stderr.strip() == (f"tinyvit.finetune: error: --out {out} is not writable (Permission denied); "
                                           f"choose another --out")
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []


def test_a_crafted_checkpoint_config_is_refused_before_the_model_is_built(finished_run, tmp_path):
    out = _copy_run(finished_run, tmp_path / "run")
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["model_config"]["depth"] = 1_000_000
    torch.save(state, out / "checkpoint.pt")
    digest, size = rundir.sha256_file(out / "checkpoint.pt"), (out / "checkpoint.pt").stat().st_size
    _edit_manifest(out, lambda files: files.update({"checkpoint.pt": {"sha256": digest, "bytes": size}}))
    message = error(["--out", str(out), "--resume", "--epochs", "2", "--num-workers", "0"])
    assert message == (f"tinyvit.finetune: error: {out / 'checkpoint.pt'}: the config does not describe these weights "
                       f"(nothing was built): depth=1000000, but the weights hold 2 blocks")
