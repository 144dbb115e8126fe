"""Issue 36: nothing silently wrong. A byte flipped in any file a run writes is refused, in one line
naming the file, by every reader that uses that file (and by every reader the file is named to); a
full disk at the run's first write is one line and leaves nothing a later run would trust."""
import json
import shutil
import subprocess
import sys

import pytest

import tinyvit
from tinyvit import compare, data, evaluate, export, finetune, predict, pretrain, rundir

ARCH = ["--image-size", "16", "--override", "patch_size=8,dim=16,depth=1,num_heads=2,mlp_dim=32"]
TINY = ["--model", "vit_tiny_patch16_224", *ARCH]
SMALL = ["--dataset", "synthetic", "--limit-train", "16", "--limit-val", "8", "--batch-size", "8",
         "--num-workers", "0", "--no-progress", "--epochs", "1"]
MAE = ["--method", "mae", "--model", "vit_tiny_patch16_224", *ARCH, "--dataset", "synthetic", "--limit-train", "16",
       "--batch-size", "8", "--decoder-dim", "16", "--decoder-depth", "1", "--decoder-heads", "2",
       "--num-workers", "0", "--no-progress", "--epochs", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished tinyvit.finetune run and a finished tinyvit.pretrain run, never changed (copied per case)."""
    root = tmp_path_factory.mktemp("runs")
    assert finetune.main(TINY + ["--weights", "none"] + SMALL + ["--out", str(root / "finetune")]) == 0
    assert pretrain.main(MAE + ["--out", str(root / "pretrain")]) == 0
    data.Synthetic(5)[3][0].save(root / "x.png")
    return root


def refusal(fn) -> str | None:
    """None if `fn` ran; the one line it refused with otherwise (a traceback fails the test)."""
    try:
        fn()
    except SystemExit as e:
        message = str(e.code)
    except tinyvit.errors.TinyvitError as e:
        message = str(e)
    else:
        return None
    assert "\n" not in message.strip() and "Traceback" not in message, message
    return message


def readers(run, image, out):
    """Each way a run's files are read, and which of them it reads. Readers that train when nothing is
    refused (--weights, --teacher, --resume) are run only on the files they read."""
    fresh = iter(out / str(i) for i in range(1000))
    ft, pt = run.name == "finetune", run.name == "pretrain"
    model = {"model.safetensors", "config.json"}
    return [
        ("export RUN", lambda: export.main([str(run), "--to", "timm", "--out", str(next(fresh))]),
         model | ({"classes.json"} if ft else set()), True),
        ("load_pretrained RUN", lambda: tinyvit.load_pretrained(run), model, True),
        ("load_pretrained RUN/model.safetensors", lambda: tinyvit.load_pretrained(run / "model.safetensors"), model, True),
        ("read_summary", lambda: rundir.read_summary(run), {"summary.json"}, True),
        *([("predict", lambda: predict.main([str(image), "--model-dir", str(run)]), model | {"classes.json"}, True),
           ("evaluate", lambda: evaluate.main(["--model-dir", str(run), "--dataset", "synthetic", "--num-workers", "0",
                                               "--limit", "8"]), model | {"classes.json"}, True),
           ("compare", lambda: compare.summarise(run), {"metrics.jsonl"}, True),
           ("finetune --teacher", lambda: finetune.main(TINY + ["--weights", "none", "--teacher", str(run)] + SMALL
                                                        + ["--out", str(next(fresh))]), model | {"classes.json"}, False),
           ("finetune --resume", lambda: finetune.main(["--out", str(run), "--resume", "--epochs", "2"]),
            {"checkpoint.pt"}, False)] if ft else []),
        ("finetune --weights RUN", lambda: finetune.main(TINY + ["--weights", str(run)] + SMALL + ["--out", str(next(fresh))]),
         model | ({"pretrain.json"} if pt else set()), False),
        *([("pretrain --resume", lambda: pretrain.main(["--out", str(run), "--resume", "--epochs", "2"]),
            {"checkpoint.pt"}, False)] if pt else []),
    ]


def flip_a_byte(path):
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # in the middle: inside a tensor, a JSON value, a PNG's pixels
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("kind", ["finetune", "pretrain"])
def test_a_flipped_byte_in_any_file_of_a_run_is_refused_by_every_reader_of_it(runs, tmp_path, kind, capsys):
    names = sorted(json.loads((runs / kind / rundir.MANIFEST).read_text())["files"])
    assert {"checkpoint.pt", "model.safetensors", "config.json", "summary.json", "metrics.jsonl"} <= set(names)
    for name in names:
        run = tmp_path / name / kind
        shutil.copytree(runs / kind, run)
        flip_a_byte(run / name)
        wrong = []
        # Named, any file of a run stands for the run (export loads the run's model): the named file is checked.
        message = refusal(lambda: export.main([str(run / name), "--to", "timm", "--out", str(tmp_path / name / "named")]))
        if message is None or f"{run / name}: corrupt or changed since the run wrote it" not in message:
            wrong.append(f"export RUN/{name}: {message}")
        for reader, fn, reads, cheap in readers(run, runs / "x.png", tmp_path / name / "out"):
            if name not in reads and not cheap:
                continue
            message = refusal(fn)
            if name in reads and (message is None or f"{run / name}: corrupt or changed since the run wrote it" not in message):
                wrong.append(f"{reader} with {name} changed: {message or 'used it'}")
            if name not in reads and message is not None:
                wrong.append(f"{reader} refused, though it does not read {name}: {message}")
        assert not wrong, "\n".join(wrong)
        capsys.readouterr()


def test_an_edited_manifest_is_caught_by_size_or_hash(runs, tmp_path):
    run = tmp_path / "finetune"
    shutil.copytree(runs / "finetune", run)
    manifest = json.loads((run / rundir.MANIFEST).read_text())
    manifest["files"]["classes.json"]["bytes"] += 1  # a digit changed, the hash left alone
    digest = manifest["files"]["model.safetensors"]["sha256"]
    manifest["files"]["model.safetensors"]["sha256"] = ("0" if digest[0] != "0" else "1") + digest[1:]
    (run / rundir.MANIFEST).write_text(json.dumps(manifest))
    image = runs / "x.png"
    assert "model.safetensors: corrupt or changed" in refusal(lambda: tinyvit.load_pretrained(run))
    with pytest.raises(rundir.ChecksumError, match=r"classes.json: corrupt or changed since the run wrote it \(\d+ bytes, "
                                                   r"tinyvit-run.json recorded \d+\)"):
        rundir.read_classes(run)
    assert "model.safetensors: corrupt or changed" in refusal(lambda: predict.main([str(image), "--model-dir", str(run)]))


def test_the_issue_case_a_corrupt_checkpoint_of_a_finished_run_is_not_exported(runs, tmp_path):
    """`python -m tinyvit.export RUN/checkpoint.pt --to timm --out X` after one byte in the middle of
    checkpoint.pt was flipped: exit 0 before issue 36, now one line naming the file and what to do."""
    run = tmp_path / "run"
    shutil.copytree(runs / "finetune", run)
    flip_a_byte(run / "checkpoint.pt")
    proc = subprocess.run([sys.executable, "-m", "tinyvit.export", str(run / "checkpoint.pt"), "--to", "timm",
                           "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and not (tmp_path / "x").exists()
    assert proc.stderr.strip().splitlines() == [
        f"tinyvit.export: error: {run / 'checkpoint.pt'}: corrupt or changed since the run wrote it "
        + proc.stderr.split("wrote it ", 1)[1].strip()]
    assert "restore the run from a copy, or run it again (--force starts it over)" in proc.stderr


# ---------------------------------------------------------------------------------------------
# A full disk at the run's first write: the manifest.
# ---------------------------------------------------------------------------------------------

FULL_AT_START = """
import resource, signal, sys
from tinyvit import finetune, pretrain, rundir

start = rundir.RunDir.start
def start_on_a_full_disk(self, fresh, dataset):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))  # write() fails with EFBIG, as with ENOSPC on a full disk
    return start(self, fresh, dataset)
rundir.RunDir.start = start_on_a_full_disk
main = finetune.main if sys.argv[1] == "finetune" else pretrain.main
sys.exit(main(sys.argv[2:]))
"""


def full_disk(kind, argv):
    return subprocess.run([sys.executable, "-c", FULL_AT_START, kind, *argv], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind", ["finetune", "pretrain"])
def test_a_full_disk_at_the_first_write_is_one_line_and_leaves_nothing(runs, tmp_path, kind):
    argv = (TINY + ["--weights", "none"] + SMALL) if kind == "finetune" else MAE
    new = tmp_path / "new" / "run"
    proc = full_disk(kind, argv + ["--out", str(new)])
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == (f"tinyvit.{kind}: error: cannot write {rundir.MANIFEST} into {new} (disk full? File too "
                                   f"large); the run did not start, nothing was written; free some space, or choose another --out")
    assert not (tmp_path / "new").exists()  # the folders the run made for itself are gone again

    # Over a finished run with --force: its files are removed, and so is the manifest that listed them.
    old = tmp_path / "old"
    shutil.copytree(runs / kind, old)
    proc = full_disk(kind, argv + ["--out", str(old), "--force"])
    assert proc.returncode == 1 and "the files of the run before it were removed (--force)" in proc.stderr, proc.stderr
    assert list(old.iterdir()) == []  # nothing a later run would take for a run: it starts afresh, no --force needed
    if kind == "finetune":
        assert finetune.main(argv + ["--out", str(old)]) == 0

    # --resume: the manifest the run had stays as it was, and the run resumes later.
    resumed = tmp_path / "resumed"
    shutil.copytree(runs / kind, resumed)
    before = (resumed / rundir.MANIFEST).read_bytes()
    proc = full_disk(kind, ["--out", str(resumed), "--resume", "--epochs", "2"])
    assert proc.returncode == 1 and "the run did not start, the run's files are as they were" in proc.stderr, proc.stderr
    assert (resumed / rundir.MANIFEST).read_bytes() == before
    assert sorted(p.name for p in resumed.iterdir()) == sorted(p.name for p in (runs / kind).iterdir())
