"""Issue 11: what a hostile new user found. Results that were silently wrong (16-bit images clipped,
a resume checkpoint loaded as a DeiT release, NaN or integer weights loaded, a crash on a
one-image batch) and mistakes that ended in a raw traceback instead of one line naming the flag,
field or file. Each test fails without its fix."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import tinyvit
from tinyvit import data, evaluate, finetune, predict
from tinyvit import tasks as trainer_module
from tinyvit.checkpoint import CheckpointError
from tinyvit.presets import parse_overrides
from tinyvit.processes import Dist
from tinyvit.schedule import epoch_batches, lr_factor, steps_per_epoch
from tinyvit.trainer import Trainer

TINY_VIT = ["--model", "vit_tiny_patch16_224", "--weights", "none", "--image-size", "32",
            "--override", "patch_size=8,dim=32,depth=2,num_heads=2,mlp_dim=64"]
TINY_RUN = ["--dataset", "synthetic", "--limit-train", "32", "--limit-val", "16", "--batch-size", "16",
            "--num-workers", "0", "--no-progress", "--epochs", "1"]


def tiny_vit(**kw):
    torch.manual_seed(0)
    return tinyvit.create_model("vit_tiny_patch16_224", num_classes=3, image_size=32,
                                **{"patch_size": 8, "dim": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64, **kw})


def tiny_resnet():
    torch.manual_seed(0)
    return tinyvit.create_model("resnet18", num_classes=3, layers=[1, 1, 1, 1])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One finished tiny fine-tuning run (a minute's worth of CPU shared by the tests below)."""
    out = tmp_path_factory.mktemp("errors") / "run"
    assert finetune.main(TINY_VIT + TINY_RUN + ["--out", str(out)]) == 0
    return out


# ---------------------------------------------------------------------------------------------
# 3. 16-bit images are scaled to 8 bits, not clipped (training, evaluate and predict read them
#    all through data.load_image).
# ---------------------------------------------------------------------------------------------


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535], [128, 255, 256, 40000]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"  # what PIL makes of a 16-bit greyscale PNG
    rgb = np.asarray(data.load_image(path))
    assert rgb.shape == (2, 4, 3) and (rgb == rgb[..., :1]).all()  # grey in all three channels
    # v / 257, rounded; convert("RGB") gave 0, 255, 255, 255 / 128, 255, 255, 255
    assert rgb[..., 0].tolist() == [[0, 1, 128, 255], [0, 1, 1, 156]]


def test_32_bit_integer_and_float_images():
    as_int = Image.fromarray(np.array([[0, 257, 65535, 70000]], dtype=np.int32))
    assert as_int.mode == "I"
    assert np.asarray(data.to_rgb(as_int))[0, :, 0].tolist() == [0, 1, 255, 255]
    as_float = Image.fromarray(np.array([[0.0, 0.5, 1.0, -0.2]], dtype=np.float32))
    assert as_float.mode == "F"
    assert np.asarray(data.to_rgb(as_float))[0, :, 0].tolist() == [0, 128, 255, 0]
    rgb = Image.new("RGB", (2, 2), (10, 20, 30))  # 8-bit images are untouched
    assert np.asarray(data.to_rgb(rgb))[0, 0].tolist() == [10, 20, 30]


def test_16_bit_images_in_an_image_folder_train_on_their_values(tmp_path):
    for split in ("train", "val"):
        for c, level in enumerate((20000, 50000)):
            folder = tmp_path / split / f"c{c}"
            folder.mkdir(parents=True)
            Image.fromarray(np.full((8, 8), level, dtype=np.uint16)).save(folder / "a.png")
    train, _, _ = data.image_folder(tmp_path)
    assert [int(np.asarray(train[i][0])[0, 0, 0]) for i in range(2)] == [78, 195]  # not 255, 255


# ---------------------------------------------------------------------------------------------
# 4. A run's checkpoint.pt is not a model release.
# ---------------------------------------------------------------------------------------------


def test_resume_checkpoint_is_refused_naming_the_run(run_dir, capsys):
    ckpt = run_dir / "checkpoint.pt"
    with pytest.raises(CheckpointError, match=f"tinyvit resume checkpoint.*load the run directory {run_dir} instead"):
        tinyvit.load_pretrained(ckpt)
    image = run_dir.parent / "x.png"
    data.Synthetic(3)[1][0].save(image)
    with pytest.raises(SystemExit, match=f"load the run directory {run_dir}"):
        predict.main([str(image), "--model-dir", str(ckpt)])
    with pytest.raises(SystemExit, match=f"load the run directory {run_dir}"):
        evaluate.main(["--model-dir", str(ckpt), "--dataset", "synthetic", "--limit", "8", "--num-workers", "0"])
    assert tinyvit.load_pretrained(run_dir).preprocess.resize_size is None  # the run itself still loads


def test_checkpoint_of_an_unfinished_run_says_to_resume(tmp_path):
    torch.save({"format": "tinyvit.finetune", "version": 1, "model": tiny_vit().state_dict()}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="has not finished.*--out .* --resume"):
        tinyvit.load_pretrained(tmp_path / "checkpoint.pt")


# ---------------------------------------------------------------------------------------------
# 6. A training batch of one image (BatchNorm cannot train on it at 1x1).
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, batch, world", [(65, 16, 1), (33, 8, 2), (17, 16, 1), (1, 16, 1), (64, 16, 1), (66, 16, 1)])
def test_a_last_batch_of_one_joins_the_one_before(n, batch, world):
    counts = None
    for rank in range(world):
        batches = epoch_batches(n, batch, Dist(rank, world), seed=0, epoch=1, join_lone_last=True)
        assert len(batches) == steps_per_epoch(n, batch, world, join_lone_last=True)
        assert sorted(len(b) for b in batches)[0] >= min(2, sum(map(len, batches)))
        assert counts in (None, [len(b) for b in batches])  # every process steps together
        counts = [len(b) for b in batches]
    if world == 1:
        assert sorted(i for b in batches for i in b) == list(range(n))  # every image still trains
    plain = epoch_batches(n, batch, Dist(0, world), seed=0, epoch=1)  # without BatchNorm: as it was
    assert len(plain) == steps_per_epoch(n, batch, world) == math.ceil(math.ceil(n / world) / batch)


def test_resnet_trains_with_a_last_batch_of_one_image(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--override", "layers=[1,1,1,1]",
            "--dataset", "synthetic", "--limit-train", "17", "--limit-val", "8", "--batch-size", "16",
            "--num-workers", "0", "--no-progress", "--epochs", "2", "--out", str(out)]
    assert finetune.main(args) == 0
    log = capsys.readouterr().out
    assert log.count("joins the batch before") == 1 and "1 steps/epoch" in log
    assert [json.loads(line)["train_images"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [17, 17]


# ---------------------------------------------------------------------------------------------
# 9. Values: NaN/Inf and non-floating tensors are refused by name.
# ---------------------------------------------------------------------------------------------


def test_nan_and_inf_weights_are_refused_by_name(tmp_path):
    tinyvit.save_pretrained(tiny_vit(), tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["blocks.0.mlp.fc1.weight"][0, 0] = float("nan")
    state["norm.bias"][1] = float("inf")
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"NaN or Inf values \(2\)") as err:
        tinyvit.load_pretrained(tmp_path)
    assert "blocks.0.mlp.fc1.weight: 1 of 2048 values" in str(err.value) and "norm.bias: 1 of 32" in str(err.value)


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64])
def test_non_floating_weights_are_refused_not_cast(tmp_path, dtype):
    state = tiny_vit().state_dict()
    state["head.weight"] = (state["head.weight"] * 100).to(dtype)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=f"(?s)wrong dtype.*head.weight: {dtype}, expected a floating-point tensor"):
        tinyvit.load_pretrained(tmp_path / "w.pth", num_heads=2)


def test_many_bad_keys_are_listed_a_few_then_counted(tmp_path):
    state = {k: v.to(torch.int32) for k, v in tiny_vit().state_dict().items()}
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=rf"(?s)wrong dtype.*\({len(state)}\).*and {len(state) - 5} more"):
        tinyvit.load_pretrained(tmp_path / "w.pth", num_heads=2)


def test_integer_buffers_and_half_precision_weights_still_load(tmp_path):
    model = tiny_resnet()
    model.bn1.num_batches_tracked.fill_(7)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, tmp_path / "r.pth")
    loaded = tinyvit.load_pretrained(tmp_path / "r.pth")
    assert loaded.bn1.num_batches_tracked.item() == 7 and loaded.conv1.weight.dtype == torch.float32
    state = model.state_dict()
    state["bn1.num_batches_tracked"] = state["bn1.num_batches_tracked"].float()
    torch.save(state, tmp_path / "r2.pth")
    with pytest.raises(CheckpointError, match="bn1.num_batches_tracked: torch.float32, expected an integer tensor"):
        tinyvit.load_pretrained(tmp_path / "r2.pth")


# ---------------------------------------------------------------------------------------------
# One clear line instead of a traceback: the fine-tuning command line.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--image-size", "0"], "--image-size 0: expected a positive number of pixels"),
    (["--image-size", "-32"], "--image-size -32: expected a positive number of pixels"),
    (["--image-size", "4"], "--image-size 4: vit_tiny_patch16_224 cuts images into 8x8 patches"),
    (["--image-size", "36"], "--image-size 36: .*use a multiple of 8"),
    (["--warmup-epochs", "-5"], "--warmup-epochs -5.0: expected 0 \\(no warm-up\\) or more"),
    (["--lr", "-0.1"], "--lr -0.1: expected a learning rate of 0 or more"),
    (["--override", "depth=two"], "--override depth='two': ViTConfig.depth expects an integer, got str"),
    (["--override", "drop_path=high"], "ViTConfig.drop_path expects a number, got str"),
    (["--override", "qkv_bias=1"], "ViTConfig.qkv_bias expects True or False, got int"),
    (["--override", "depth=0"], "ViTConfig.depth=0; expected a positive integer"),
    (["--override", "drop_path=-0.1"], r"ViTConfig.drop_path=-0.1; expected a probability in \[0, 1\)"),
])
def test_bad_flags_are_one_line_and_touch_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=message) as err:
        finetune.main(TINY_VIT + TINY_RUN + ["--out", str(out)] + args)
    assert "\n" not in str(err.value) and not out.exists()


@pytest.mark.parametrize("error", [RuntimeError("CUDA error: an illegal memory access"), TypeError("bad operand")])
def test_a_bug_during_set_up_keeps_its_traceback(tmp_path, monkeypatch, error):
    """Only tinyvit's own errors (the user's mistakes) become one line: a RuntimeError from torch
    or a TypeError is a bug, and the traceback is what finds it."""
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(trainer_module, "build_model", broken)
    out = tmp_path / "out"
    with pytest.raises(type(error), match=str(error)):
        finetune.main(TINY_VIT + TINY_RUN + ["--out", str(out)])
    assert not out.exists()  # the lock is released and the folder it made removed, as for a user mistake


def test_a_missing_weights_file_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="--weights .*nowhere.pt: no such file or directory") as err:
        finetune.main(TINY_VIT[:2] + ["--weights", str(tmp_path / "nowhere.pt")] + TINY_RUN + ["--out", str(tmp_path / "o")])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("size, message", [("16", "a ResNet downsamples by 32; use at least 32"),
                                           ("0", "expected a positive number")])
def test_resnet_image_size_below_its_stride(tmp_path, size, message):
    with pytest.raises(SystemExit, match=f"--image-size {size}: {message}"):
        finetune.main(["--model", "resnet18", "--weights", "none", "--image-size", size, "--out", str(tmp_path / "o")]
                      + TINY_RUN)


def test_override_layers_list_is_still_accepted():
    assert parse_overrides(["layers=[1,1,1,1]"], "resnet18") == {"layers": [1, 1, 1, 1]}
    assert parse_overrides(["pre_logits=None,drop_path=0"], "vit_tiny_patch16_224") == {"pre_logits": None, "drop_path": 0}
    with pytest.raises(ValueError, match="ResNetConfig.layers expects a list"):
        parse_overrides(["layers=2"], "resnet18")


def test_one_step_run_adapts_the_default_warmup(tmp_path, capsys):
    one_step = ["--limit-train", "16", "--batch-size", "16"]
    assert finetune.main(TINY_VIT + TINY_RUN + one_step + ["--out", str(tmp_path / "a")]) == 0
    assert "warm-up 0 steps" in capsys.readouterr().out
    assert finetune.main(TINY_VIT + TINY_RUN + one_step + ["--warmup-epochs", "0", "--out", str(tmp_path / "b")]) == 0
    with pytest.raises(SystemExit, match="--warmup-epochs 0.5 covers the whole run"):  # given explicitly: still refused
        finetune.main(TINY_VIT + TINY_RUN + one_step + ["--warmup-epochs", "0.5", "--out", str(tmp_path / "c")])


def test_warmup_zero_means_none():
    assert lr_factor(0, warmup=0, total=10) == 1.0
    assert lr_factor(5, warmup=0, total=10) == pytest.approx(0.5)


def test_lr_zero_warns_that_nothing_trains(tmp_path, capsys):
    assert finetune.main(TINY_VIT + TINY_RUN + ["--lr", "0", "--out", str(tmp_path / "run")]) == 0
    assert "--lr 0: the learning rate is zero, so nothing will train" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# CIFAR files that are there but corrupt.
# ---------------------------------------------------------------------------------------------


def test_corrupt_cifar_archive_is_named_not_downloaded_over(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"half a download")
    with pytest.raises(data.DatasetError, match=f"{archive} is there but fails its MD5 checksum"):
        data.load_splits("cifar10", tmp_path)
    assert archive.read_bytes() == b"half a download"


def test_corrupt_extracted_cifar_file_is_named(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(b"not the pickle")
    with pytest.raises(data.DatasetError, match=f"{folder / 'train'}: there but failing the MD5 checksum"):
        data.load_splits("cifar100", tmp_path)


# ---------------------------------------------------------------------------------------------
# evaluate --json and predict DIR.
# ---------------------------------------------------------------------------------------------


def test_evaluate_json_directory_is_refused_before_evaluating(run_dir, tmp_path, monkeypatch):
    def never(*a, **kw):
        raise AssertionError("evaluated before refusing --json")

    monkeypatch.setattr(evaluate, "evaluate", never)
    argv = ["--model-dir", str(run_dir), "--dataset", "synthetic", "--limit", "8", "--num-workers", "0"]
    with pytest.raises(SystemExit, match=f"--json {tmp_path}: is a directory"):
        evaluate.main(argv + ["--json", str(tmp_path)])
    with pytest.raises(SystemExit, match="--json .*: no directory .*nowhere"):
        evaluate.main(argv + ["--json", str(tmp_path / "nowhere" / "e.json")])


def test_predict_a_directory_with_one_unreadable_file(run_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        data.Synthetic(3)[i][0].save(images / f"{i}.png")
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (images / "notes.txt").write_text("not an image, not listed")
    capsys.readouterr()
    assert predict.main([str(images), "--model-dir", str(run_dir), "--json"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["image"] for r in rows] == [str(images / "0.png"), str(images / "1.png")]
    assert f"warning: {images / 'broken.jpg'}: cannot read this image" in captured.err and "skipped" in captured.err
    with pytest.raises(SystemExit, match="a directory without image files"):
        predict.main([str(tmp_path), "--model-dir", str(run_dir)])


# ---------------------------------------------------------------------------------------------
# The models: input dtypes, and configs rejected at construction with the field named.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [tiny_vit, tiny_resnet])
@pytest.mark.parametrize("dtype, hint", [(torch.uint8, "model.preprocess.eval_transform"),
                                         (torch.float64, "model.preprocess"), (torch.float16, "model.preprocess")])
def test_wrong_input_dtype_names_the_expected_one(make, dtype, hint):
    model = make().eval()
    x = torch.zeros(2, 3, 32, 32, dtype=dtype)
    with pytest.raises(ValueError, match=f"expected torch.float32 images.*got {dtype}.*{hint}"):
        model(x)


@pytest.mark.parametrize("make", [tiny_vit, tiny_resnet])
def test_autocast_and_low_precision_models_still_run(make):
    model = make().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model(x).dtype == torch.bfloat16  # fp32 images, fp32 model, autocast: fine
            assert model(x.bfloat16()).shape == (2, 3)  # autocast casts the images for each op
            with pytest.raises(ValueError, match="got torch.float64"):  # autocast leaves float64 alone
                model(x.double())
        assert model.to(torch.bfloat16)(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("kwargs, message", [
    (dict(patch_size=0), "ViTConfig.patch_size=0; expected a positive integer"),
    (dict(image_size=0), "ViTConfig.image_size=0; expected a positive integer"),
    (dict(image_size=-16), "ViTConfig.image_size=-16"),
    (dict(image_size=8, patch_size=16), "ViTConfig.image_size=8 is smaller than one patch"),
    (dict(num_classes=-1), "ViTConfig.num_classes=-1; expected an integer >= 0"),
    (dict(drop_path=-0.1), "ViTConfig.drop_path=-0.1; expected a probability"),
    (dict(drop_path=1.0), "ViTConfig.drop_path=1.0; expected a probability"),
    (dict(depth="2"), "ViTConfig.depth='2'; expected a positive integer"),
])
def test_vit_config_rejects_bad_fields_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tinyvit.ViTConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(layers=(0, 0, 0, 0)), r"ResNetConfig.layers=\(0, 0, 0, 0\); expected 4 positive block counts"),
    (dict(layers=(2, 2, -1, 2)), "ResNetConfig.layers"),
    (dict(num_classes=-3), "ResNetConfig.num_classes=-3; expected an integer >= 0"),
])
def test_resnet_config_rejects_bad_fields_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tinyvit.ResNetConfig(**kwargs)


def test_negative_num_classes_everywhere(tmp_path):
    for call in (lambda: tinyvit.create_model("vit_tiny_patch16_224", num_classes=-1),  # was: no head
                 lambda: tinyvit.create_model("resnet18", num_classes=-1)):
        with pytest.raises(ValueError, match="num_classes=-1"):
            call()
    for model in (tiny_vit(), tiny_resnet()):
        with pytest.raises(ValueError, match="num_classes=-2; expected an integer >= 0"):
            model.reset_classifier(-2)
    tinyvit.save_pretrained(tiny_vit(), tmp_path)
    with pytest.raises(ValueError, match="num_classes=-1"):  # was a raw error from nn.Linear
        tinyvit.load_pretrained(tmp_path, num_classes=-1)


def test_set_image_size_zero_is_refused():
    model = tiny_vit()
    for size in (0, -8, 4):
        with pytest.raises(ValueError, match=f"image_size={size}; expected a multiple of patch_size=8"):
            model.set_image_size(size)
    assert model.cfg.image_size == 32 and model.set_image_size(16).cfg.image_size == 16


# ---------------------------------------------------------------------------------------------
# Checkpoint files: config.json names itself and the field; register tokens are named.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("section, field, value, message", [
    ("preprocess", "image_size", -32, "preprocess.image_size=-32; expected a positive number of pixels"),
    ("preprocess", "std", [0.5, 0.0, 0.5], r"preprocess.std=\[0.5, 0.0, 0.5\]; every channel's std must be positive"),
    ("preprocess", "interpolation", "lanczos", "preprocess.interpolation='lanczos'; expected 'bilinear'"),
    ("config", "image_size", -32, "config: ViTConfig.image_size=-32; expected a positive integer"),
])
def test_bad_config_json_names_the_file_and_field(tmp_path, section, field, value, message):
    tinyvit.save_pretrained(tiny_vit(), tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta[section][field] = value
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'config.json'}: {message}"):
        tinyvit.load_pretrained(tmp_path)


def test_register_tokens_are_named_as_unsupported(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    timm_model = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=2, num_classes=3,
                                   reg_tokens=4)
    torch.save(timm_model.state_dict(), tmp_path / "vit_reg.pth")
    with pytest.raises(CheckpointError, match=r"unsupported: register tokens \('reg_token' \(1, 4, 64\)"):
        tinyvit.load_pretrained(tmp_path / "vit_reg.pth")


# ---------------------------------------------------------------------------------------------
# Issue 22: crafted files, flags and resources, each one line naming the file, field or flag.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, message", [
    ("image_size", 10 ** 9, r"image_size=1000000000 \(a grid of 125000000x125000000 patches of 8 px\), but the "
                            "position embedding holds 16 patch positions"),
    ("depth", 1_000_000, "depth=1000000, but the weights hold 1 blocks"),
    ("dim", 10 ** 7, "dim=10000000, but the patch embedding is 32 wide"),
    ("num_classes", 10 ** 9, "num_classes=1000000000, but the head has 3 classes"),
])
def test_a_crafted_config_is_checked_against_the_weights_before_building(tmp_path, field, value, message):
    tinyvit.save_pretrained(tiny_vit(), tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"][field] = value
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'config.json'}: the config does not describe these weights "
                                              f"\\(nothing was built\\): {message}"):
        tinyvit.load_pretrained(tmp_path)


def test_a_crafted_sincos_image_size_is_refused_as_too_large(tmp_path):
    tinyvit.save_pretrained(tiny_vit(pos_embed="sincos"), tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"]["image_size"] = 8 * 10 ** 6
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="image_size=8000000: its sin-cos position table .* would not fit in memory"):
        tinyvit.load_pretrained(tmp_path)


@pytest.mark.parametrize("to, file, edit, message", [
    ("hf", "config.json", lambda c: c.update(layer_norm_eps="abc"), "layer_norm_eps='abc'; expected a positive number"),
    ("hf", "config.json", lambda c: c.update(num_attention_heads="two"), "num_attention_heads='two'; expected a positive"),
    ("hf", "preprocessor_config.json", lambda c: c.update(size="big"), "size='big'; expected a positive number of pixels"),
    ("hf", "preprocessor_config.json", lambda c: c.update(size={"shortest_edge": "x"}), "size=.*; expected a positive"),
    ("timm", "config.json", lambda c: c["pretrained_cfg"].update(crop_pct=0), "pretrained_cfg.crop_pct=0; expected a positive"),
    ("timm", "config.json", lambda c: c["pretrained_cfg"].update(crop_pct="x"), "pretrained_cfg.crop_pct='x'; expected"),
])
def test_crafted_hf_and_timm_configs_name_the_file_and_field(tmp_path, to, file, edit, message):
    from tinyvit import export

    out = export.export_hf(tiny_vit(), tmp_path / "m") if to == "hf" else export.export_timm(tiny_vit(), tmp_path / "m")
    config = json.loads((out / file).read_text())
    edit(config)
    (out / file).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"{out / file}: {message}"):
        tinyvit.load_pretrained(out)


@pytest.mark.parametrize("flag, value, message", [
    ("--weight-decay", "-1", "argument --weight-decay: '-1': expected 0 or more"),
    ("--weight-decay", "nan", "argument --weight-decay: 'nan': expected 0 or more"),
    ("--num-workers", "-1", "argument --num-workers: '-1': expected 0 or more"),
    ("--num-workers", "two", "argument --num-workers: 'two': expected an integer"),
])
def test_negative_weight_decay_and_workers_are_refused_at_parse_time(capsys, flag, value, message):
    with pytest.raises(SystemExit) as err:
        finetune.parse_args([flag, value])
    assert err.value.code == 2 and message in capsys.readouterr().err


def test_an_image_size_too_large_for_memory_is_said_so(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"--image-size 8000000: too large for this machine's memory \(.* GiB for the "
                                         r"position embedding alone"):
        finetune.main(TINY_VIT[:4] + ["--override", "patch_size=8,dim=32,depth=2,num_heads=2,mlp_dim=64",
                                      "--image-size", "8000000", "--out", str(out)] + TINY_RUN)
    assert not out.exists()


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
                 "allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB"),
])
def test_out_of_memory_in_training_suggests_a_smaller_batch(tmp_path, monkeypatch, error):
    def oom(self, *batch):
        raise error

    monkeypatch.setattr(Trainer, "train_step", oom)
    with pytest.raises(SystemExit, match=r"^tinyvit.finetune: error: out of memory in epoch 1 \(.*\); try a smaller "
                                         r"--batch-size \(now 16\)") as err:
        finetune.main(TINY_VIT + TINY_RUN + ["--out", str(tmp_path / "out")])
    assert "\n" not in str(err.value)


def test_a_full_disk_while_writing_the_checkpoint_keeps_the_previous_one(tmp_path):
    """A real write refused for space (RLIMIT_FSIZE: write() fails with EFBIG, as it fails with ENOSPC on a
    full disk), in a child process: torch.save's zip writer reports it as its own RuntimeError."""
    import subprocess
    import sys

    out = tmp_path / "run"
    script = (
        "import resource, signal, sys, torch\n"
        "from tinyvit import rundir\n"
        "run = rundir.RunDir.open(sys.argv[1], log=lambda m: None)\n"
        "run.start(fresh=True, dataset={})\n"
        "run.write('checkpoint.pt', lambda f: torch.save({'w': torch.zeros(1000)}, f))\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))\n"
        "try:\n"
        "    run.write('checkpoint.pt', lambda f: torch.save({'w': torch.zeros(100000)}, f))\n"
        "except rundir.WriteError as e:\n"
        "    print(e)\n"
        "run.close()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(f"cannot write checkpoint.pt into {out} (disk full? ")
    assert proc.stdout.strip().endswith("the previous checkpoint is kept")
    assert torch.load(out / "checkpoint.pt", weights_only=True)["w"].shape == (1000,)
    from tinyvit import rundir

    rundir.verify(out / "checkpoint.pt")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", rundir.MANIFEST]  # no staging left


def test_a_full_disk_during_a_run_is_one_line(tmp_path, monkeypatch):
    import errno

    from tinyvit import rundir

    out = tmp_path / "out"
    assert finetune.main(TINY_VIT + TINY_RUN + ["--out", str(out)]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    save = torch.save

    def full(obj, f, *a, **kw):
        if isinstance(obj, dict) and obj.get("format") == rundir.CHECKPOINT_FORMAT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(SystemExit) as err:
        finetune.main(["--out", str(out), "--resume", "--epochs", "2", "--num-workers", "0"])
    assert str(err.value) == (f"tinyvit.finetune: error: cannot write checkpoint.pt into {out} (disk full? No space left "
                              f"on device); the previous checkpoint is kept")
    assert (out / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("kw, message", [
    (dict(token_learner_tokens=16), "token_learner_tokens=16: not fewer than the 16 patch tokens of a 4x4 grid"),
    (dict(token_learner_tokens=40), "token_learner_tokens=40: not fewer than the 16 patch tokens"),
    (dict(token_learner_at=99), "token_learner_at=99; expected a block index in 0..1"),
    (dict(token_learner_at=-1), "token_learner_at=-1; expected a block index in 0..1"),
])
def test_token_learner_counts_and_index_are_checked(kw, message):
    from tinyvit.vit import ViTConfig

    with pytest.raises(ValueError, match=message):
        ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, num_heads=2, mlp_dim=64, **kw)
    assert ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, num_heads=2, mlp_dim=64, token_learner_tokens=15)


def test_a_corrupt_jpeg_in_val_with_workers_is_one_line_and_no_traceback_at_exit(tmp_path):
    import subprocess
    import sys

    from image_fixtures import make_image_folder

    root = make_image_folder(tmp_path / "data")
    bad = root / "val" / "class0" / "1.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not the rest of a JPEG")
    proc = subprocess.run(
        [sys.executable, "-m", "tinyvit.finetune", *TINY_VIT, "--dataset", "imagefolder", "--data-dir", str(root),
         "--batch-size", "4", "--epochs", "1", "--no-progress", "--num-workers", "2", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 1
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("tinyvit.finetune: error: ") and f"{bad}: cannot read" in lines[0], proc.stderr
