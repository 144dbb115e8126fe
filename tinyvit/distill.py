"""Knowledge distillation from a fine-tuned teacher, as DeiT trains its students.

Touvron et al. 2021 ("Training data-efficient image transformers & distillation through
attention", ICML) train a ViT student to mimic a stronger teacher (a CNN in the paper). The
student carries a second token beside the class token, the *distillation token*, with its own
head: the class head learns the labels, the distillation head learns what the teacher says, and at
evaluation the two heads' logits are averaged (tinyvit's VisionTransformer does that in eval mode
when `distilled=True`). A student without a distillation token distills through its single head,
the classic set-up of Hinton et al. 2015.

The loss, exactly as facebookresearch/deit `losses.py` (`DistillationLoss.forward`) computes it,
with a the weight `--distill-alpha` and T the temperature `--distill-tau`:

    hard:  (1 - a) · CE(cls, y) + a · CE(dist, argmax teacher)
    soft:  (1 - a) · CE(cls, y) + a · T² · KL(softmax(teacher/T) ‖ softmax(dist/T)) summed, / (B · C)

DeiT's soft term sums the KL over the batch and the classes and divides by `outputs_kd.numel()`
= B · C, not by B: it is C times smaller than the per-sample KL of Hinton's recipe. It is kept
here as DeiT has it, so alpha and tau mean what they mean in DeiT's papers and configs. The label
term takes class indices or probability targets (MixUp / CutMix), as F.cross_entropy does.

The teacher is anything `tinyvit.load_pretrained` reads, a finished `tinyvit.finetune` run
directory included; it must predict the dataset's classes (the count, and the names when a
classes.json lies beside it). It runs frozen, in eval mode, under the student's autocast, on the
student's own (augmented) images, resampled to the teacher's resolution and renormalised with its
mean/std when they differ. Without augmentation those images are the same every epoch, so the
teacher's logits are computed once per training image and cached, like the frozen prefix's
features (tinyvit/cache.py); with augmentation the teacher runs on every batch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from tinyvit.errors import MissingFileError, TinyvitError
from tinyvit.preprocess import Preprocess
from tinyvit.sums import Sums

KINDS = ("hard", "soft")


# ---------------------------------------------------------------------------------------------
# The loss.
# ---------------------------------------------------------------------------------------------


def split_heads(outputs: Union[torch.Tensor, tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    """(class-head logits, distillation-head logits); one head plays both for a student without a
    distillation token."""
    if isinstance(outputs, tuple):
        return outputs
    return outputs, outputs


def distillation_loss(
    outputs: Union[torch.Tensor, tuple],  # [b, c] logits, or (class head, distillation head)
    targets: torch.Tensor,  # [b] class indices, or [b, c] probabilities
    teacher_logits: torch.Tensor,  # [b, c]
    kind: str = "hard",
    alpha: float = 0.5,
    tau: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, label term, distillation term), each a scalar, as DeiT's DistillationLoss."""
    if kind not in KINDS:
        raise TinyvitError(f"distillation kind {kind!r}; expected one of {KINDS}")
    cls, dist = (o.float() for o in split_heads(outputs))
    teacher = teacher_logits.float()
    base = F.cross_entropy(cls, targets)
    if kind == "hard":
        distill = F.cross_entropy(dist, teacher.argmax(dim=1))
    else:
        distill = F.kl_div(
            F.log_softmax(dist / tau, dim=1), F.log_softmax(teacher / tau, dim=1), reduction="sum", log_target=True
        ) * (tau * tau) / dist.numel()
    return (1 - alpha) * base + alpha * distill, base, distill


# ---------------------------------------------------------------------------------------------
# The teacher: loaded, checked against the dataset's classes, frozen.
# ---------------------------------------------------------------------------------------------


def _classes_beside(path: Path) -> Optional[list]:
    """The class names a run directory (or the folder of a weight file) records in classes.json."""
    from tinyvit import rundir

    try:  # verified against a run's manifest; one that cannot be read is refused, not skipped
        return rundir.read_classes(path if path.is_dir() else path.parent)
    except ValueError as e:
        raise TinyvitError(f"--teacher {path}: {e}; cannot check the teacher's classes against the dataset's") from None


def check_classes(path: Path, teacher: nn.Module, classes: list) -> None:
    """Refuse a teacher that predicts other classes than the dataset's, naming both."""
    count = teacher.cfg.num_classes
    if count != len(classes):
        raise TinyvitError(f"--teacher {path}: it predicts {count} classes, the dataset has {len(classes)} "
                           f"({', '.join(map(str, classes[:5]))}{', ...' if len(classes) > 5 else ''})")
    names = _classes_beside(path)
    if names is not None and [str(n) for n in names] != [str(c) for c in classes]:
        i = next((i for i, (a, b) in enumerate(zip(names, classes)) if str(a) != str(b)), min(len(names), len(classes)))
        raise TinyvitError(f"--teacher {path}: its classes.json differs from the dataset's classes at index {i}: "
                           f"teacher {names[i:i + 3]}, dataset {classes[i:i + 3]}")


def load_teacher(path: Union[str, Path], classes: list, device: torch.device) -> nn.Module:
    """`tinyvit.load_pretrained(path)`, checked, on `device`, frozen and pinned in eval mode."""
    from tinyvit import freeze
    from tinyvit.convert import load_pretrained

    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"--teacher {path}: no such file or directory")
    teacher = load_pretrained(path)
    check_classes(path, teacher, classes)
    if teacher.preprocess is None:
        raise TinyvitError(f"--teacher {path}: the checkpoint records no preprocessing (mean/std, resolution)")
    teacher.requires_grad_(False)
    freeze._pin_eval(teacher)  # eval mode whoever calls train(): BatchNorm statistics, dropout fixed
    return teacher.to(device)


def adapt_images(images: torch.Tensor, student: Preprocess, teacher: Preprocess) -> torch.Tensor:
    """The student's normalised images [b, c, S, S] as the teacher expects them: back to [0, 1]
    pixels, resized to the teacher's square, normalised with its mean/std (no-op when they agree)."""
    same_norm = student.mean == teacher.mean and student.std == teacher.std
    if same_norm and student.image_size == teacher.image_size:
        return images

    def stats(values):
        return torch.tensor(values, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)

    x = images * stats(student.std) + stats(student.mean)
    if student.image_size != teacher.image_size:
        mode = teacher.interpolation if teacher.interpolation != "nearest" else "bilinear"
        x = F.interpolate(x, size=(teacher.image_size, teacher.image_size), mode=mode, align_corners=False, antialias=True)
    return (x - stats(teacher.mean)) / stats(teacher.std)


# ---------------------------------------------------------------------------------------------
# The distiller: the loss in the training loop, the cached logits, the two terms per epoch.
# ---------------------------------------------------------------------------------------------


class Distiller:
    """What tinyvit.finetune needs for `--teacher`: the teacher, its cached logits, the loss."""

    def __init__(self, teacher: nn.Module, student_preprocess: Preprocess, kind: str = "hard",
                 alpha: float = 0.5, tau: float = 1.0, source: str = "teacher"):
        if kind not in KINDS:
            raise TinyvitError(f"--distill {kind!r}; expected one of {', '.join(KINDS)}")
        if not 0.0 <= alpha <= 1.0 or tau <= 0:
            raise TinyvitError(f"--distill-alpha {alpha} must lie in [0, 1] and --distill-tau {tau} be positive")
        self.teacher, self.student_preprocess = teacher, student_preprocess
        self.kind, self.alpha, self.tau, self.source = kind, alpha, tau, source
        self.cache = None  # cache.FeatureCache of the teacher's logits per training image, once built
        self.val_acc: Optional[float] = None  # the teacher's own accuracy on the validation split
        self.device = next(teacher.parameters()).device
        self.reset()

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """images [b, c, S, S] (the student's preprocessing) -> the teacher's logits [b, classes]."""
        return self.teacher(adapt_images(images, self.student_preprocess, self.teacher.preprocess))

    def build(self, train_images, val_images, *, cached: bool, dtype, batch_size: int,
              rank: int, world: int, path: Path, progress: Callable[[int, str], object],
              log: Callable[[str], None] = print) -> float:
        """Once per run: the teacher's val accuracy, and (cached=True) its logits for every training
        image. `*_images` are sources of student-preprocessed images (tinyvit/batches.py). Seconds taken."""
        from tinyvit import cache

        seconds = 0.0
        jobs = [("val", val_images)] if self.val_acc is None else []
        if cached and self.cache is None:
            jobs.append(("train", train_images))
        for name, dataset in jobs:
            with progress(len(dataset), f"teacher logits ({name})") as bar:
                built = cache.build(self.teacher_logits, dataset, storage="memory", device=self.device, dtype=dtype,
                                    path=path / f"teacher_{name}.npy", batch_size=batch_size,
                                    rank=rank, world=world, progress=bar)
            seconds += built.seconds
            if name == "val":
                predicted = built.features.float().argmax(dim=1)
                self.val_acc = (predicted == built.labels).double().mean().item()
            else:
                self.cache = built
        if jobs:
            log(self.describe())
        return seconds

    def loss(self, outputs, targets: torch.Tensor, inputs: torch.Tensor, indices: list[int]):
        """(loss, the logits that predict): the teacher's logits come from the cache (rows `indices`)
        or, with augmentation, from the teacher on this batch's images `inputs`."""
        if self.cache is not None:
            teacher, _ = self.cache.gather(indices, targets.device)
        else:
            teacher = self.teacher_logits(inputs)
        total, base, distill = distillation_loss(outputs, targets, teacher, self.kind, self.alpha, self.tau)
        n = targets.shape[0]
        self.sums.add(label_loss_sum=base.double() * n, distill_loss_sum=distill.double() * n, count=n)
        cls, dist = split_heads(outputs)
        return total, (cls + dist) / 2 if isinstance(outputs, tuple) else cls

    def reset(self) -> None:
        self.sums = Sums(self.device, ("label_loss_sum", "distill_loss_sum", "count"))

    def epoch_metrics(self) -> dict:
        """The two loss terms averaged over this epoch's training images (all processes), then reset."""
        total = self.sums.total()
        n = max(total["count"], 1.0)
        self.reset()
        return {"train_label_loss": total["label_loss_sum"] / n, "train_distill_loss": total["distill_loss_sum"] / n,
                "teacher_val_acc": self.val_acc}

    def describe(self) -> str:
        t = self.teacher
        size = t.preprocess.image_size
        acc = f", {100 * self.val_acc:.2f}% on the validation split" if self.val_acc is not None else ""
        return (f"distillation ({self.kind}, alpha {self.alpha:g}, tau {self.tau:g}) from {self.source}: "
                f"{type(t).__name__} at {size} px{acc}; its logits "
                f"{'cached once per training image' if self.cache is not None else 'computed on every batch'}")
