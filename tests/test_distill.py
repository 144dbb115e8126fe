"""Distillation (DeiT): the losses by hand, the teacher frozen and checked, cached logits equal to
live ones, and `python -m tinyvit.finetune --teacher` end to end on tiny data."""
import json
import math

import pytest
import torch

import tinyvit
from tinyvit import distill, finetune, rundir
from tinyvit.processes import Dist, StopRequest
from tinyvit.trainer import Trainer
from tinyvit.preprocess import Preprocess
from tinyvit.vit import ViTConfig, VisionTransformer

# --- the losses, against numbers worked out by hand ---------------------------------------------

# One sample, two classes. Class head logits (0, ln 3): softmax (1/4, 3/4). Label 0: CE = ln 4.
CLS = torch.tensor([[0.0, math.log(3)]])
# Distillation head (ln 3, 0): softmax (3/4, 1/4). Teacher (0, ln 3): argmax 1, softmax (1/4, 3/4).
DIST = torch.tensor([[math.log(3), 0.0]])
TEACHER = torch.tensor([[0.0, math.log(3)]])
Y = torch.tensor([0])


def test_hard_loss_by_hand():
    total, base, kd = distill.distillation_loss((CLS, DIST), Y, TEACHER, "hard", alpha=0.5)
    assert base.item() == pytest.approx(math.log(4))  # -log 1/4
    assert kd.item() == pytest.approx(math.log(4))  # the teacher says class 1; the dist head gives it 1/4
    assert total.item() == pytest.approx(math.log(4))
    total, _, _ = distill.distillation_loss((CLS, DIST), Y, TEACHER, "hard", alpha=0.25)
    assert total.item() == pytest.approx(0.75 * math.log(4) + 0.25 * math.log(4))
    total, base, kd = distill.distillation_loss((CLS, CLS), Y, TEACHER, "hard", alpha=0.3)
    assert kd.item() == pytest.approx(math.log(4 / 3)) and total.item() == pytest.approx(0.7 * math.log(4) + 0.3 * math.log(4 / 3))


def test_soft_loss_by_hand_with_deits_normalisation():
    # KL(teacher || dist) = 1/4 ln((1/4)/(3/4)) + 3/4 ln((3/4)/(1/4)) = (1/2) ln 3, divided by
    # outputs.numel() = 1 * 2 (DeiT divides by batch * classes), times T^2 = 1.
    total, base, kd = distill.distillation_loss((CLS, DIST), Y, TEACHER, "soft", alpha=0.5, tau=1.0)
    assert kd.item() == pytest.approx(0.5 * math.log(3) / 2)
    assert total.item() == pytest.approx(0.5 * math.log(4) + 0.5 * kd.item())
    # At T = 2: student softmax(ln3/2, 0) = (√3, 1)/(√3+1), teacher the reverse; times T^2 = 4.
    r = math.sqrt(3)
    p, q = torch.tensor([1, r]) / (1 + r), torch.tensor([r, 1]) / (1 + r)  # teacher, student
    expected = (p * (p / q).log()).sum().item() * 4 / 2
    _, _, kd = distill.distillation_loss((CLS, DIST), Y, TEACHER, "soft", tau=2.0)
    assert kd.item() == pytest.approx(expected)


def test_soft_loss_matches_deits_formula_on_a_random_batch():
    torch.manual_seed(0)
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    T = 3.0
    deit = torch.nn.functional.kl_div(torch.log_softmax(s / T, 1), torch.log_softmax(t / T, 1),
                                      reduction="sum", log_target=True) * T * T / s.numel()
    _, _, kd = distill.distillation_loss((s, s), torch.zeros(5, dtype=torch.long), t, "soft", tau=T)
    torch.testing.assert_close(kd, deit)
    assert kd > 0
    _, _, same = distill.distillation_loss((t, t), torch.zeros(5, dtype=torch.long), t, "soft", tau=T)
    assert same.abs() < 1e-6  # the student equals the teacher: nothing to learn


def test_single_head_student_and_probability_targets():
    # No distillation token: one head takes both terms.
    total, base, kd = distill.distillation_loss(CLS, Y, TEACHER, "hard", alpha=0.5)
    assert base.item() == pytest.approx(math.log(4)) and kd.item() == pytest.approx(math.log(4 / 3))
    # MixUp-style probability targets: 0.5/0.5 -> CE = 0.5 ln 4 + 0.5 ln 4/3.
    soft_y = torch.tensor([[0.5, 0.5]])
    _, base, _ = distill.distillation_loss((CLS, DIST), soft_y, TEACHER, "hard")
    assert base.item() == pytest.approx(0.5 * math.log(4) + 0.5 * math.log(4 / 3))


def test_bad_kind_is_refused():
    with pytest.raises(ValueError, match="'medium'"):
        distill.distillation_loss(CLS, Y, TEACHER, "medium")


# --- the teacher ---------------------------------------------------------------------------------

SMALL = dict(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2, mlp_dim=64)


def save_teacher(path, num_classes=10, classes=None, image_size=16, mean=(0.5,) * 3):
    torch.manual_seed(1)
    model = VisionTransformer(ViTConfig(**{**SMALL, "image_size": image_size}, num_classes=num_classes))
    model.preprocess = Preprocess(image_size, mean, (0.25,) * 3, resize_size=None)
    tinyvit.save_pretrained(model, path)
    if classes is not None:
        (path / "classes.json").write_text(json.dumps(classes))
    return path


def test_class_mismatch_is_refused_naming_both(tmp_path):
    classes = [str(i) for i in range(10)]
    with pytest.raises(ValueError, match=r"--teacher .*t5: it predicts 5 classes, the dataset has 10"):
        distill.load_teacher(save_teacher(tmp_path / "t5", num_classes=5), classes, torch.device("cpu"))
    other = classes[:3] + ["x", "y"] + classes[5:]
    with pytest.raises(ValueError, match=r"differs .* index 3: teacher \['x', 'y', '5'\], dataset \['3', '4', '5'\]"):
        distill.load_teacher(save_teacher(tmp_path / "named", classes=other), classes, torch.device("cpu"))
    teacher = distill.load_teacher(save_teacher(tmp_path / "ok", classes=classes), classes, torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    # A classes.json that cannot be read is refused, not taken as "no names to check".
    for name, text in (("garbled", '["0", "1'), ("object", '{"0": 1}'), ("binary", b"\xff\xfe")):
        folder = save_teacher(tmp_path / name)
        (folder / "classes.json").write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(ValueError, match=rf"--teacher .*{name}: .*classes.json: .*cannot check the teacher's classes"):
            distill.load_teacher(folder, classes, torch.device("cpu"))
    teacher.train()
    assert not teacher.training  # pinned in eval mode


def test_adapt_images_resizes_and_renormalises():
    student = Preprocess(8, (0.5,) * 3, (0.5,) * 3, resize_size=None)
    teacher = Preprocess(16, (0.0,) * 3, (1.0,) * 3, "bilinear", resize_size=None)
    x = torch.full((2, 3, 8, 8), 0.2)  # pixel 0.6 in the student's normalisation
    y = distill.adapt_images(x, student, teacher)
    assert y.shape == (2, 3, 16, 16)
    torch.testing.assert_close(y, torch.full_like(y, 0.6))
    assert distill.adapt_images(x, student, student) is x


# --- end to end ----------------------------------------------------------------------------------

TINY_VIT = ["--model", "vit_tiny_patch16_224", "--weights", "none", "--image-size", "16",
            "--override", "patch_size=4,dim=32,depth=2,num_heads=2,mlp_dim=64"]
SMALL_RUN = ["--dataset", "synthetic", "--limit-train", "64", "--limit-val", "32", "--batch-size", "16",
             "--num-workers", "0", "--no-progress", "--lr", "1e-3"]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A finished run directory (a tiny ResNet-18 trained for one epoch) to distil from."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    args = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--unfreeze", "all",
            "--epochs", "1", "--out", str(out)] + SMALL_RUN
    assert finetune.main(args) == 0
    return out


def test_cli_distils_with_a_frozen_teacher_and_reports_both_terms(teacher_run, tmp_path, capsys):
    before = {k: v.clone() for k, v in tinyvit.load_pretrained(teacher_run).state_dict().items()}
    files = {p.name: p.stat().st_mtime_ns for p in teacher_run.iterdir()}
    out = tmp_path / "student"
    args = TINY_VIT + SMALL_RUN + ["--override", "distilled=True", "--unfreeze", "all", "--epochs", "2",
                                    "--teacher", str(teacher_run), "--distill", "soft", "--distill-tau", "2", "--out", str(out)]
    assert finetune.main(args) == 0
    log = capsys.readouterr().out
    assert "distillation (soft, alpha 0.5, tau 2)" in log and "computed on every batch" in log
    rows = metrics(out)
    teacher_acc = rows[0]["teacher_val_acc"]
    assert 0.0 <= teacher_acc <= 1.0 and all(r["teacher_val_acc"] == teacher_acc for r in rows)
    for r in rows:
        assert r["train_label_loss"] > 0 and r["train_distill_loss"] > 0
        # The logged loss is the weighted sum of the two terms.
        assert r["train_loss"] == pytest.approx(0.5 * r["train_label_loss"] + 0.5 * r["train_distill_loss"], rel=1e-6)
    after = tinyvit.load_pretrained(teacher_run).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the teacher's files are untouched
    assert files == {p.name: p.stat().st_mtime_ns for p in teacher_run.iterdir()}
    student = tinyvit.load_pretrained(out)
    assert student.cfg.distilled and student.head_dist is not None


def test_cached_teacher_logits_equal_live_ones(teacher_run, tmp_path):
    cfg, _ = finetune.parse_args(TINY_VIT + SMALL_RUN + ["--no-augment", "--epochs", "1", "--teacher", str(teacher_run),
                                                         "--out", str(tmp_path / "s")])
    trainer = Trainer(cfg, Dist(), torch.device("cpu"))
    trainer.run = rundir.RunDir.open(tmp_path / "s")  # as finetune.main does: every file goes through it
    trainer.run.start(fresh=True, dataset={})
    d = trainer.task.distiller
    snapshot = {k: v.clone() for k, v in d.teacher.state_dict().items()}  # BatchNorm statistics included
    assert trainer.fit(StopRequest(trainer.log))  # the logits once, then one epoch of training against them
    assert d.cache is not None and d.cache.features.shape == (64, 10)
    images, _ = next(trainer.train_data.batches([list(range(64))]))  # the student's images, unaugmented
    torch.testing.assert_close(d.cache.features, d.teacher_logits(images), rtol=1e-5, atol=1e-5)
    assert all(torch.equal(v, d.teacher.state_dict()[k]) for k, v in snapshot.items())
    assert trainer.history[0]["train_distill_loss"] > 0
    trainer.run.close()


def test_teacher_errors_are_one_line(teacher_run, tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"^tinyvit.finetune: error: --teacher .*nowhere: no such file"):
        finetune.main(TINY_VIT + SMALL_RUN + ["--teacher", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match=r"^tinyvit.finetune: error: --distill soft needs --teacher PATH$"):
        finetune.main(TINY_VIT + SMALL_RUN + ["--distill", "soft", "--out", str(tmp_path / "b")])
    wrong = save_teacher(tmp_path / "t3", num_classes=3)
    with pytest.raises(SystemExit, match=r"it predicts 3 classes, the dataset has 10"):
        finetune.main(TINY_VIT + SMALL_RUN + ["--teacher", str(wrong), "--out", str(tmp_path / "c")])
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_a_teacher_inside_out_is_refused(teacher_run, tmp_path):
    import shutil

    run = shutil.copytree(teacher_run, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    for teacher in (run, run / "model.safetensors"):
        with pytest.raises(SystemExit, match=rf"^tinyvit.finetune: error: --teacher {teacher} is in --out {run}: this "
                                             rf"run would replace"):
            finetune.main(TINY_VIT + SMALL_RUN + ["--teacher", str(teacher), "--out", str(run), "--force"])
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
