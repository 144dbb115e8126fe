"""tinyvit.augment and tinyvit.batches: the batched augmentation equals torchvision's per-image ops
sample by sample, its randomness is per sample and a function of (seed, step) alone, processes
share a global batch's draws, and the in-memory tensor matches the per-image path."""
import numpy as np
import pytest
import torch
from PIL import Image

from tinyvit import augment, batches, data
from tinyvit.preprocess import HALF, Preprocess


def uint8_batch(n=6, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_shift_is_a_reflect_padded_crop_per_image():
    from torchvision.transforms.v2 import functional as F

    x = uint8_batch()
    offsets = torch.tensor([[0, 0], [1, -1], [-1, 1], [2, 2], [-2, 0], [0, -2]])
    out = augment.shift(x, offsets)
    padded = torch.nn.functional.pad(x.float(), (2, 2, 2, 2), mode="reflect").to(torch.uint8)
    for k, (dy, dx) in enumerate(offsets.tolist()):  # RandomCrop's crop at (pad + dy, pad + dx)
        assert torch.equal(out[k], F.crop(padded[k], 2 + dy, 2 + dx, 8, 8))


def test_flip_and_erase_touch_only_the_chosen_images_and_pixels():
    x = uint8_batch(4)
    mirrored = torch.tensor([True, False, True, False])
    out = augment.flip(x, mirrored)
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1]) and torch.equal(out[2], x[2].flip(-1))
    y = torch.ones(3, 3, 10, 12)
    boxes = torch.tensor([[1, 2, 3, 4], [0, 0, 0, 0], [9, 11, 1, 1]])  # (top, left, height, width)
    erased = augment.erase(y, boxes)
    assert erased[0, :, 1:4, 2:6].eq(0).all() and erased[0].eq(0).sum() == 3 * 12
    assert erased[1].eq(1).all() and erased[2].eq(0).sum() == 3 and erased[2, :, 9, 11].eq(0).all()


def test_erasing_boxes_fit_and_follow_the_probability():
    g = torch.Generator().manual_seed(0)
    boxes = augment.erasing_boxes(4000, 16, 16, 0.25, g)
    top, left, h, w = boxes.unbind(1)
    on = h > 0
    assert abs(on.float().mean().item() - 0.25) < 0.03
    assert ((top + h <= 16) & (left + w <= 16)).all() and (h[on] < 16).all() and (w[on] < 16).all()
    area = (h * w)[on].float() / 256
    assert area.min() >= 0.005 and area.max() <= 0.5  # scale (0.02, 0.33), rounding aside


def test_randaugment_applies_torchvisions_op_to_each_image_alone():
    x = uint8_batch(6, 16)
    policy = augment.RandAugment("bilinear")
    names = [name for name, _ in policy.ops]
    chosen = ["Rotate", "Posterize", "Equalize", "ShearX", "Identity", "Solarize"]
    ops = torch.tensor([[names.index(c), names.index("Identity")] for c in chosen])
    negative = torch.tensor([[True, False], [False, False], [False, False], [False, False], [False, False], [True, False]])
    out = policy(x, ops, negative)
    for k, name in enumerate(chosen):
        magnitudes, signed = policy.policy._AUGMENTATION_SPACE[name]
        values = magnitudes(31, 16, 16)
        m = 0.0 if values is None else float(values[9]) * (-1 if signed and negative[k, 0] else 1)
        alone = policy.policy._apply_image_or_video_transform(x[k:k + 1], name, m, interpolation=policy.policy.interpolation,
                                                              fill=policy.policy._fill)
        assert torch.equal(out[k:k + 1], alone), name
    assert not torch.equal(out[0], x[0]) and torch.equal(out[4], x[4])


def pipeline(**kw):
    return augment.BatchAugment(16, "bicubic", HALF, HALF, **{"padding": 1, "flip": True, "randaugment": True,
                                                                "random_erasing": 0.5, **kw})


def test_draws_are_per_sample_and_a_function_of_seed_and_step():
    p, x = pipeline(), uint8_batch(8)
    run = lambda seed, step: p(x, p.draw(8, augment.step_generator(seed, step)))  # noqa: E731
    a = run(0, 5)
    assert a.shape == (8, 3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, run(0, 5))  # a resumed run redraws the same
    assert not torch.equal(a, run(0, 6)) and not torch.equal(a, run(1, 5))
    # Per sample: two copies of one image in a batch get different augmentations.
    twins = p(x[:1].repeat(8, 1, 1, 1), p.draw(8, augment.step_generator(0, 5)))
    assert len({t.numpy().tobytes() for t in twins}) > 4


def test_processes_take_their_rows_of_the_global_batchs_draws():
    p, x = pipeline(), uint8_batch(8)
    params = p.draw(8, augment.step_generator(3, 7))
    whole = p(x, params)
    for rank in range(2):  # DistributedSampler: process r holds global positions r, r + 2, ...
        part = p(x[rank::2], augment.pick(params, rank, 2))
        torch.testing.assert_close(part, whole[rank::2], rtol=0, atol=0)


def test_the_tensor_source_matches_the_per_image_path_at_evaluation():
    splits = data.load_splits("digits", limit_train=40, limit_val=30)
    images, labels = data.as_tensor(splits.val)
    assert images.shape == (30, 3, 8, 8) and images.dtype == torch.uint8
    assert labels.tolist() == [splits.val[i][1] for i in range(30)]
    assert np.array_equal(images[3, 0].numpy(), np.asarray(splits.val[3][0])[..., 0])
    pre = Preprocess(16, HALF, HALF, "bicubic", None)
    p = augment.BatchAugment(16, "bicubic", HALF, HALF)
    held = batches.TensorBatches(images, labels, p, augment=False)
    _, eval_tf = data.transforms(pre, low_res=True, augment=False)
    pil = batches.ImageBatches(splits.val, eval_tf, eval_tf, device=torch.device("cpu"))
    (a, ya), (b, yb) = next(held.batches([list(range(30))])), next(pil.batches([list(range(30))]))
    assert torch.equal(ya, yb)
    # torch's and PIL's bicubic upsampling, each rounded to uint8: at most one grey level apart.
    assert (a - b).abs().max().item() <= 1 / 255 / 0.5 + 1e-6


def test_as_tensor_refuses_mixed_sizes_and_large_sets(monkeypatch):
    class Mixed(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return Image.new("RGB", (8, 8 + i)), 0

    assert data.as_tensor(Mixed()) is None
    monkeypatch.setattr(data, "IN_MEMORY_LIMIT", 100)
    assert data.as_tensor(data.Synthetic(4)) is None


def test_repeated_indices_wrap_around():
    x, y = uint8_batch(5), torch.arange(5)
    source = batches.TensorBatches(x, y, augment.BatchAugment(8, "bilinear", HALF, HALF), augment=False, repeat=3)
    assert len(source) == 15
    _, labels = next(source.batches([[0, 6, 14]]))
    assert labels.tolist() == [0, 1, 4]
