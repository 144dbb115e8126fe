"""tinyvit.study: a tiny grid on the digits (2 runs of 1 epoch at tiny sizes), results.csv, skipping
finished runs, nested subsets, the step budget and the FLOPs counter."""
import csv
import json

import pytest
import torch

from tinyvit import data, study

TINY_VIT = "vit=vit_tiny_patch16_224 --image-size 8 --override patch_size=2,dim=16,depth=1,num_heads=2,mlp_dim=32"
COMMON = ["--", "--dataset", "digits", "--weights", "none", "--unfreeze", "all", "--lr", "1e-3", "--batch-size", "16",
          "--limit-val", "32", "--num-workers", "0", "--epochs", "1"]


def test_tiny_study_writes_results_and_skips_finished_runs(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["--out", str(out), "--models", TINY_VIT, "--train-sizes", "20", "40", "--seeds", "0", *COMMON]
    assert study.main(args) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["model"], r["train_size"], r["seed"]) for r in rows] == [("vit", "20", "0"), ("vit", "40", "0")]
    for r in rows:
        assert 0 <= float(r["final_val_acc"]) <= 1 and float(r["best_val_acc"]) >= float(r["final_val_acc"])
        assert int(r["params"]) > 1000 and int(r["flops_per_image"]) > 0 and float(r["seconds"]) > 0
    # The budget: the full split (1,347 at batch 16) is 85 steps per epoch; 20 images repeat 67 times
    # per epoch, 40 images 33 times, so each run makes about 85 steps.
    assert [int(r["steps"]) for r in rows] == [84, 83] and [int(r["passes"]) for r in rows] == [67, 33]
    summary = json.loads((out / rows[0]["run"] / "summary.json").read_text())
    assert summary["config"]["limit_train"] == 20 and summary["config"]["repeat_train"] == 67
    assert (out / "results.md").read_text().count("\n") == 4 and (out / "scaling.png").stat().st_size > 5000
    first = capsys.readouterr().out
    assert "[2/2]" in first

    # Again: nothing runs, the same rows come back.
    mtime = (out / rows[0]["run"] / "summary.json").stat().st_mtime
    assert study.main(args) == 0
    assert "2 of 2 runs already finished" in capsys.readouterr().out
    assert (out / rows[0]["run"] / "summary.json").stat().st_mtime == mtime
    assert list(csv.DictReader((out / "results.csv").open())) == rows


def test_subsets_are_nested_and_shared_across_seeds():
    train = data.load_splits("digits").train
    small, large = data.limit(train, 50, seed=0), data.limit(train, 200, seed=0)
    assert set(small.indices) < set(large.indices)
    assert data.limit(train, 50, seed=1).indices != small.indices  # another data seed: another draw


def test_plan_grid_and_budget(tmp_path):
    models = [study.parse_model("resnet18"), study.parse_model(TINY_VIT)]
    assert models[1].label == "vit" and models[1].preset == "vit_tiny_patch16_224" and "--image-size" in models[1].flags
    grid = study.parse_grid(["patch_size=2,4", "layers=[1,1,1,1],[2,2,2,2]"])
    assert grid == {"patch_size": ["2", "4"], "layers": ["[1,1,1,1]", "[2,2,2,2]"]}
    runs = study.plan(models, [100, 1000], {"depth": ["1", "2"]}, [0, 1], full=1000, batch=100, steps=None,
                      epochs=3, same_epochs=False, data_seed=7, out=tmp_path, passthrough=["--dataset", "digits"])
    assert len(runs) == 2 * 2 * 2 * 2 and len({r.out for r in runs}) == 16
    assert {r.steps for r in runs} == {30}  # 3 epochs of the full split, whatever the size
    small = next(r for r in runs if r.size == 100)
    assert small.repeat == 10 and small.epochs == 3 and small.passes == 30
    assert "--limit-train" in small.argv and "--data-seed" in small.argv and small.argv[small.argv.index("--data-seed") + 1] == "7"
    assert "--limit-train" not in next(r for r in runs if r.size == 1000).argv
    # A model's own --epochs / --batch-size give it its own budget; its flags come after the common ones.
    own = study.plan(models, [100, 1000], {}, [0], 1000, 100, None, 3, False, 0, tmp_path, ["--epochs", "3"],
                     per_model={"vit": (50, 2)})
    assert {r.steps for r in own if r.model.label == "vit"} == {40} and {r.steps for r in own if r.model.label == "resnet18"} == {30}
    vit_argv = next(r.argv for r in own if r.model.label == "vit")
    assert vit_argv.index("--image-size") > vit_argv.index("--epochs")
    same = study.plan(models[:1], [100], {}, [0], 1000, 100, None, 3, True, 0, tmp_path, [])
    assert same[0].epochs == 3 and same[0].steps == 3
    assert study.parse_size("0.25", 1347) == 337 and study.parse_size("200", 1347) == 200
    for bad in ("0", "2000", "1.5", "x"):
        with pytest.raises(ValueError, match="--train-sizes"):
            study.parse_size(bad, 1347)


@pytest.mark.parametrize("args, message", [
    (["--models", "resnet18", "--", "--dataset", "digits", "--seed", "3"], "--seed: the study sets"),
    (["--models", "resnet18", "--override", "depth=2", "--", "--dataset", "digits"], "--override"),
    (["--models", "resnet18", "--override", "depth", "--", "--dataset", "digits"], "expected KEY=V1,V2"),
    (["--models", "resnet18", "--train-sizes", "5000", "--", "--dataset", "digits"], "1,347 images"),
    (["--models", "resnet18", "--train-sizes", "inf", "--", "--dataset", "digits"], "--train-sizes inf: expected"),
    (["--models", "resnet18", "--train-sizes", "nan", "--", "--dataset", "digits"], "--train-sizes nan: expected"),
    (["--models", "resnet18", "--seeds", "0", "0", "--", "--dataset", "digits"], "--seeds 0 0: seed 0 is listed twice"),
    (["--models", "v=resnet18 --limit-train 8", "--", "--dataset", "digits"], "--models v: --limit-train: the study sets"),
    (["--models", "v=resnet18 --limit-t 8", "--", "--dataset", "digits"], "--models v: --limit-train: the study sets"),
    (["--models", "v=resnet18 --seed=3", "--", "--dataset", "digits"], "--models v: --seed: the study sets"),
    (["--models", "resnet18", "--", "--dataset", "digits", "--repeat-tr", "2"], "--repeat-train: the study sets"),
])
def test_bad_studies_are_one_line_errors(tmp_path, args, message):
    with pytest.raises(SystemExit) as e:
        study.main(["--out", str(tmp_path / "s"), *args])
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "s").exists()


def test_flops_counter_counts_convs_linears_and_attention():
    from tinyvit import create_model

    vit = create_model("vit_tiny_patch16_224", num_classes=10, image_size=8, patch_size=2, dim=16, depth=1,
                       num_heads=2, mlp_dim=32)
    n, d = 17, 16  # 16 patches + class token
    # The last (only) block computes the class token's row alone, against all 17 keys (tinyvit/flops.py).
    expected = (2 * 16 * 3 * 2 * 2 * d  # patch embedding: a conv with a 2x2x3 kernel at 16 positions
                + 2 * d * d + 2 * 2 * n * d * d + 2 * d * d  # q (one row), k and v (every token), proj
                + 2 * 2 * n * d  # q k^T and P v for that row
                + 2 * d * 32 * 2  # the MLP on that row
                + 2 * d * 10)  # the head
    assert study._flops_per_image(vit) == expected
    resnet = create_model("resnet18", num_classes=1000)
    assert abs(study._flops_per_image(resnet) / 1e9 - 3.64) < 0.05  # 1.82 GMACs at 224 px, the usual table
    assert not any(m._forward_hooks for m in resnet.modules())


def test_an_interrupted_run_is_resumed_and_jobs_run_in_processes(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["--out", str(out), "--models", TINY_VIT, "--train-sizes", "32", "--seeds", "0", "1", "--same-epochs",
            *COMMON[:-2], "--epochs", "2"]
    runs = study.plan([study.parse_model(TINY_VIT)], [32], {}, [0, 1], 1347, 16, None, 2, True, 0, out, [])
    # As if the study had been stopped after the first epoch of seed 0: a checkpoint, no summary.
    from tinyvit import finetune

    first = runs[0]
    argv = [*first.argv[:first.argv.index("--out")], *COMMON[1:-2], "--out", str(first.out), "--seed", "0",
            "--data-seed", "0", "--epochs", "1", "--no-progress", "--limit-train", "32"]
    assert finetune.main(argv) == 0
    (first.out / "summary.json").unlink()
    assert study.run_state(first) is study.RunState.RESUMABLE
    # Two runs at once in processes: seed 0 continues from its checkpoint, seed 1 starts.
    assert study.main(["--jobs", "2", *args]) == 0
    log = study.log_path(first).read_text()
    assert "--resume" in log and "resuming" in log
    history = [json.loads(l) for l in (first.out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted(r["seed"] for r in rows) == ["0", "1"] and all(r["epochs"] == "2" for r in rows)


def test_with_jobs_a_student_starts_only_after_its_teachers_run_finished(tmp_path, monkeypatch):
    """--jobs 2 over two seeds of a teacher and its student: seed 1's teacher finishes first, and the
    next run to start is seed 1's student, not seed 0's (whose teacher is still training)."""
    vit, resnet = study.parse_model(TINY_VIT), study.parse_model("resnet=resnet18 --image-size 8")
    runs = study.plan([vit, resnet], [32], {}, [0, 1], 1347, 16, None, 1, True, 0, tmp_path, [])
    study.link_levers(runs, {}, {"vit": "resnet"})
    started, polls = [], {"resnet-n32-seed0": 6, "resnet-n32-seed1": 1}  # polls until the run ends

    class Process:
        def __init__(self, run):
            self.run, self.returncode = run, None
            started.append((run.name(), [r.name() for r in runs if study.run_state(r) is study.RunState.DONE]))

        def poll(self):
            polls[self.run.name()] = polls.get(self.run.name(), 1) - 1
            if polls[self.run.name()] <= 0:
                self.run.out.mkdir(parents=True)
                (self.run.out / "summary.json").write_text("{}")
                self.returncode = 0
            return self.returncode

    monkeypatch.setattr(study, "start_process", lambda run, threads: Process(run))
    monkeypatch.setattr(study, "read_summary", lambda run: {"final": {"val_acc": 0.5}, "best": {"val_acc": 0.5}})
    assert study.execute(runs, 2, lambda msg: None) == 0
    order = [name for name, _ in started]
    assert order == ["resnet-n32-seed0", "resnet-n32-seed1", "vit-n32-seed1", "vit-n32-seed0"]
    for name, done in started:  # what had finished when each run started
        assert not name.startswith("vit") or name.replace("vit", "resnet") in done


def test_a_rerun_never_reports_old_runs_under_a_new_command_or_edited_results(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["--out", str(out), "--models", TINY_VIT, "--train-sizes", "20", "--same-epochs", *COMMON]
    assert study.main(args) == 0
    row = next(csv.DictReader((out / "results.csv").open()))
    run = out / row["run"]
    capsys.readouterr()

    # Other pass-through flags: the finished run was not made with them.
    for other, flag in ((["--lr", "2e-3"], "--lr 0.001"), (["--label-smoothing", "0.1"], "--label-smoothing 0.0"),
                        (["--dataset", "synthetic"], None)):
        with pytest.raises(SystemExit) as e:
            study.main([*args, *other])
        message = str(e.value)
        assert "\n" not in message
        if flag is not None:  # (another dataset has another size: another run folder, or a refused size)
            assert f"{run} was made with {flag}; this study plans" in message
    assert (run / "summary.json").is_file()

    # An edited result is refused, not reported.
    summary = json.loads((run / "summary.json").read_text())
    summary["final"]["val_acc"] = 0.999
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(SystemExit, match="summary.json: corrupt or changed since the run wrote it"):
        study.main(args)
    assert "0.999" not in (out / "results.csv").read_text()


def test_a_log_that_is_a_link_is_not_followed(tmp_path):
    out = tmp_path / "study"
    runs = study.plan([study.parse_model(TINY_VIT)], [20], {}, [0], 1347, 16, None, 1, True, 0, out, [])
    outside = tmp_path / "bashrc"
    outside.write_text("mine\n")
    study.log_path(runs[0]).parent.mkdir(parents=True)
    study.log_path(runs[0]).symlink_to(outside)
    with pytest.raises(study.StudyError, match="not a regular file"):
        study.open_log(runs[0])
    study.log_path(runs[0]).unlink()
    runs[0].out.symlink_to(tmp_path)
    with pytest.raises(study.StudyError, match="a symbolic link where the study keeps its own folder"):
        study.open_log(runs[0])
    assert outside.read_text() == "mine\n"
