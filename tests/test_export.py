"""Export to Hugging Face and timm, checked by those libraries themselves (offline, tiny random
models): they load the folder with no missing or unexpected keys and compute the same logits;
transformers' pipeline gives tinyvit.predict's probabilities; tinyvit reads the export back. Then
what each target refuses, the command line, and timm's model interface (forward_intermediates,
get_classifier, fc_norm pooling, distilled pre-logits) against timm on the same weights."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import warnings

import numpy as np
import pytest
import torch
from convert_fixtures import perturb

import tinyvit
from tinyvit import export as ex
from tinyvit.checkpoint import Checkpoint
from tinyvit.keymaps import map_keys
from tinyvit.preprocess import HALF, IMAGENET_MEAN, IMAGENET_STD, Preprocess
from tinyvit.resnet import ResNet, ResNetConfig
from tinyvit.vit import ViTConfig, VisionTransformer

TINY = dict(image_size=32, patch_size=8, dim=64, depth=2, num_heads=2, mlp_dim=128, num_classes=10)
X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
PLAIN = Preprocess(32, HALF, HALF, "bicubic", None)  # straight to 32x32, as ViTImageProcessor does
CROP = Preprocess(32, IMAGENET_MEAN, IMAGENET_STD, "bicubic", 40)  # short side 40, centre crop 32 (DeiT's way)


def tiny(preprocess=PLAIN, **kw) -> VisionTransformer:
    torch.manual_seed(0)
    model = perturb(VisionTransformer(ViTConfig(**{**TINY, **kw})))
    model.preprocess = preprocess
    return model


def tiny_resnet(block="basic", layers=(1, 1, 1, 1)) -> ResNet:
    torch.manual_seed(0)
    model = perturb(ResNet(ResNetConfig(block=block, layers=layers, num_classes=10)))
    model.preprocess = CROP
    return model


@contextlib.contextmanager
def transformers_log():
    """Every transformers log record of WARNING and above (its logger does not propagate)."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# The tables run backwards: reading the export gives back every key and tensor.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, {"distilled": True}, {"patch_embed": "linear"}, {"qkv_bias": False}])
@pytest.mark.parametrize("family", ["hf", "timm"])
def test_invert_is_undone_by_the_readers(family, kw):
    model = tiny(**kw)
    state = ex._plain_state(model)
    written = ex.hf_state_dict(model) if family == "hf" else ex.timm_state_dict(model)
    if family == "hf":
        assert "vit.encoder.layer.1.attention.attention.query.weight" in written or kw.get("distilled")
        assert all(k.startswith(("vit.", "deit.", "classifier.", "cls_classifier.", "distillation_classifier."))
                   for k in written)
    mapped = map_keys(Checkpoint(path=None, tensors=written, family=family))
    assert not mapped.unexpected and not mapped.problems
    assert mapped.state.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(mapped.state[k], v), k


def test_invert_names_a_key_the_target_has_no_place_for():
    with pytest.raises(ex.ExportError, match=r"fc_norm.weight \(64,\): the target format has no place"):
        ex.invert(ex._hf_table(False), {"fc_norm.weight": torch.ones(64)})


# ---------------------------------------------------------------------------------------------
# Hugging Face transformers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [
    {},
    {"distilled": True},
    {"act": "gelu_tanh", "norm_eps": 1e-12, "qkv_bias": False},  # HF-loaded numerics travel in config.json
    {"patch_embed": "linear", "in_channels": 1},
])
def test_hf_export_loads_in_transformers_with_the_same_logits(tmp_path, kw):
    import transformers

    model = tiny(preprocess=PLAIN.with_image_size(32), **kw)
    x = torch.randn(3, model.cfg.in_channels, 32, 32)
    out = quiet(ex.export_hf, model, tmp_path / "hf", classes=[f"class {i}" for i in range(10)])
    cls = transformers.DeiTForImageClassificationWithTeacher if kw.get("distilled") else transformers.ViTForImageClassification
    with transformers_log() as records:
        ref, info = cls.from_pretrained(out, output_loading_info=True)
    assert records == []  # no LOAD REPORT of missing / unexpected keys, nothing else either
    assert all(not v for v in info.values()), info
    assert ref.config.id2label[3] == "class 3" and ref.config.label2id["class 9"] == 9
    with torch.no_grad():
        torch.testing.assert_close(ref.eval()(pixel_values=x).logits, model(x), rtol=1e-5, atol=1e-5)
        back = quiet(tinyvit.load_pretrained, out)  # and tinyvit reads it back
        torch.testing.assert_close(back(x), model(x), rtol=1e-6, atol=1e-6)
    assert back.preprocess == model.preprocess
    assert (back.cfg.norm_eps, back.cfg.act) == (model.cfg.norm_eps, model.cfg.act)


def test_the_log_capture_sees_a_missing_key(tmp_path):
    """The check above is not vacuous: a folder with a key removed shows up in transformers' log."""
    import transformers
    from safetensors.torch import load_file, save_file

    out = quiet(ex.export_hf, tiny(), tmp_path / "hf")
    state = load_file(out / "model.safetensors")
    del state["vit.layernorm.bias"]
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    with transformers_log() as records:
        transformers.ViTForImageClassification.from_pretrained(out)
    assert any("vit.layernorm.bias" in r.getMessage() and "MISSING" in r.getMessage() for r in records)


def _images(tmp_path, sizes):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(sizes):
        small = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)  # smooth, photo-like
        path = tmp_path / f"image{i}.png"
        Image.fromarray(small).resize((w, h), Image.BICUBIC).save(path)
        paths.append(str(path))
    return paths


def _predict_json(run, images) -> list[dict]:
    from tinyvit import predict

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        predict.main(images + ["--model-dir", str(run), "--json", "--top-k", "10"])
    return [{t["class"]: t["prob"] for t in json.loads(line)["top"]} for line in buf.getvalue().splitlines()]


# Sizes whose resized sides never overhang the crop by 3 mod 4 pixels (see export_hf's warning):
# 32x32 and 64x64 are squares; 48x40 -> 48x40; 20x30 -> 40x60; 90x45 -> 80x40.
SIZES = [(32, 32), (48, 40), (20, 30), (64, 64), (90, 45)]


@pytest.mark.parametrize("pre", [PLAIN, Preprocess(32, HALF, HALF, "bilinear", None), CROP], ids=["bicubic", "bilinear", "crop"])
def test_pipeline_matches_tinyvit_predict(tmp_path, pre):
    """transformers' pipeline on the export against `python -m tinyvit.predict` on the run, images
    of several sizes. With the PIL backend transformers resizes as tinyvit does (through PIL), and
    the probabilities agree to 1e-4 (measured ~5e-8); its default torchvision backend resizes uint8
    tensors itself (+-1 grey level): same top-1, probabilities within 1e-3 (measured 1.5e-4)."""
    from transformers import AutoImageProcessor, pipeline

    model = tiny(preprocess=pre)
    run = tmp_path / "run"
    tinyvit.save_pretrained(model, run)
    classes = [f"c{i}" for i in range(10)]
    (run / "classes.json").write_text(json.dumps(classes))
    images = _images(tmp_path, SIZES)
    ours = _predict_json(run, images)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ex.export(run, "hf", tmp_path / "hf")
    assert len(caught) == (pre.resize_size is not None)  # the crop-offset warning, only with a crop
    proc = json.loads((out / "preprocessor_config.json").read_text())
    assert proc["image_mean"] == list(pre.mean) and proc["resample"] == {"bicubic": 3, "bilinear": 2}[pre.interpolation]
    for backend, tol in [("pil", 1e-4), ("torchvision", 1e-3)]:
        processor = AutoImageProcessor.from_pretrained(out, backend=backend)
        theirs = pipeline("image-classification", model=str(out), image_processor=processor)(images, top_k=10)
        for o, t in zip(ours, theirs):
            t = {r["label"]: r["score"] for r in t}
            assert max(o, key=o.get) == max(t, key=t.get)
            assert max(abs(o[c] - t[c]) for c in classes) < tol, backend
    default = pipeline("image-classification", model=str(out))  # what a user types
    assert default(images[0])[0]["label"] == max(ours[0], key=ours[0].get)


# ---------------------------------------------------------------------------------------------
# timm
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [
    {},
    {"distilled": True},
    {"pool": "mean", "class_token": False},
    {"pool": "mean"},  # global_pool='avg' with the class token, normalise then pool (fc_norm=False)
    {"pool": "mean", "fc_norm": True},  # MAE-style: pool, then normalise
    {"act": "gelu_tanh"},
    {"patch_embed": "linear", "mlp_dim": 96},
])
def test_timm_export_loads_in_timm_with_the_same_logits(tmp_path, kw):
    import timm

    model = tiny(preprocess=CROP, **kw)
    out = quiet(ex.export_timm, model, tmp_path / "timm", classes=[f"c{i}" for i in range(10)])
    config = json.loads((out / "config.json").read_text())
    by_dir = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    # the by-name call the export writes into README.md, run as written
    call = (out / "README.md").read_text().split("```python\n")[1].split("```")[0]
    scope = {}
    exec(call, scope)
    by_name = scope["model"].eval()
    with torch.no_grad():
        for ref in (by_dir, by_name):
            torch.testing.assert_close(ref(X), model(X), rtol=1e-5, atol=1e-5)
        back = quiet(tinyvit.load_pretrained, out)
        torch.testing.assert_close(back(X), model(X), rtol=1e-6, atol=1e-6)
    assert back.preprocess == model.preprocess and back.cfg.pool == model.cfg.pool
    # timm's own preprocessing from the exported pretrained_cfg: resize 40 (short side), crop 32
    data = timm.data.resolve_data_config({}, model=by_dir)
    assert data["input_size"] == (3, 32, 32) and data["interpolation"] == "bicubic"
    assert tuple(data["mean"]) == IMAGENET_MEAN and config["label_names"][2] == "c2"
    resize = timm.data.create_transform(**data).transforms[0]
    assert resize.size == 40


def test_timm_export_of_a_plain_resize_squashes(tmp_path):
    import timm

    out = quiet(ex.export_timm, tiny(preprocess=PLAIN), tmp_path / "timm")
    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    first = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model)).transforms[0]
    assert first.size == (32, 32)  # straight to the square, nothing cropped
    assert quiet(tinyvit.load_pretrained, out).preprocess == PLAIN


def test_crop_pct_lands_on_the_resize_size():
    """timm resizes to floor(size / crop_pct): the exported crop_pct must give resize_size back
    exactly, and tinyvit's reader of timm configs the whole recipe."""
    from tinyvit.convert import preprocess_from_timm

    for size in range(16, 520, 7):
        for resize in range(size + 1, 2 * size, 3):
            pre = Preprocess(size, HALF, HALF, "bicubic", resize)
            pct, mode = pre.timm_crop()
            assert math.floor(size / pct) == resize and mode == "center"
            assert preprocess_from_timm({"input_size": (3, size, size), "crop_pct": pct, "crop_mode": mode,
                                         "interpolation": "bicubic", "mean": HALF, "std": HALF}) == pre


def test_preset_architectures_keep_their_timm_name():
    name, args = ex.timm_model_args(tinyvit.create_model("deit_small_distilled_patch16_224"))
    assert name == "deit_small_distilled_patch16_224" and args["embed_dim"] == 384
    assert ex.timm_model_args(tiny())[0] == "vit_base_patch16_224"  # a custom size: a base name + model_args


@pytest.mark.parametrize("block,layers", [("basic", (1, 1, 1, 1)), ("bottleneck", (1, 2, 1, 1))])
def test_resnet_exports_to_timm_and_refuses_hf(tmp_path, block, layers):
    import timm

    model = tiny_resnet(block, layers)
    out = quiet(ex.export_timm, model, tmp_path / "timm")
    ref = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), model(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(quiet(tinyvit.load_pretrained, out)(x), model(x))
    with pytest.raises(ex.ExportError, match="ResNet.*export it --to timm"):
        ex.export_hf(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_a_finetuned_run_exports_to_both_and_the_libraries_agree(tmp_path, capsys):
    """The issue's 'done when': a real (tiny, one-epoch) tinyvit.finetune run, exported with the
    command line to both formats; transformers and timm load the folders and give tinyvit's logits."""
    import timm
    import transformers

    from tinyvit import finetune

    run = tmp_path / "run"
    assert finetune.main(["--model", "deit_tiny_distilled_patch16_224", "--weights", "none", "--image-size", "32",
                          "--override", "patch_size=8,dim=32,depth=2,num_heads=2,mlp_dim=64",
                          "--dataset", "synthetic", "--limit-train", "32", "--limit-val", "16", "--batch-size", "16",
                          "--num-workers", "0", "--no-progress", "--epochs", "1", "--out", str(run)]) == 0
    model = quiet(tinyvit.load_pretrained, run)
    classes = json.loads((run / "classes.json").read_text())
    x = torch.randn(2, 3, 32, 32)
    assert ex.main([str(run), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert ex.main([str(run), "--to", "timm", "--out", str(tmp_path / "timm")]) == 0
    capsys.readouterr()
    with transformers_log() as records:
        hf = transformers.DeiTForImageClassificationWithTeacher.from_pretrained(tmp_path / "hf").eval()
    assert records == [] and [hf.config.id2label[i] for i in range(len(classes))] == classes
    tm = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x).logits, model(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tm(x), model(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Refusals, sources, the command line
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("to,kw,match", [
    ("hf", {"pos_embed": "sincos"}, r"ViTConfig.pos_embed='sincos': transformers' ViT stores learned"),
    ("timm", {"pos_embed": "sincos"}, r"ViTConfig.pos_embed='sincos'"),
    ("hf", {"pool": "mean"}, r"ViTConfig.pool='mean': .* class token"),
    ("hf", {"fc_norm": True}, r"ViTConfig.fc_norm=True"),
    ("hf", {"pre_logits": 32}, r"ViTConfig.pre_logits=32"),
    ("timm", {"pre_logits": 32}, r"ViTConfig.pre_logits=32"),
    ("hf", {"num_classes": 0}, r"ViTConfig.num_classes=0"),
    ("timm", {"norm_eps": 1e-12}, r"ViTConfig.norm_eps=1e-12: .* eps 1e-6"),
])
def test_what_a_target_cannot_hold_is_refused_by_field(tmp_path, to, kw, match):
    with pytest.raises(ex.ExportError, match=match):
        (ex.export_hf if to == "hf" else ex.export_timm)(tiny(**kw), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_token_learner_and_unknown_fields_are_refused(tmp_path):
    model = tiny()
    model.cfg.token_learner_tokens = 8  # a field another issue adds: checked with getattr
    for to in ("hf", "timm"):
        reasons = ex.refusals(model, to)
        assert sum("token_learner_tokens" in r for r in reasons) == 1, reasons  # named once, not twice
        assert any("token_learner_tokens=8" in r and "has no TokenLearner" in r for r in reasons)


def test_out_folder_must_be_new_or_empty(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    with pytest.raises(ex.ExportError, match="--out .*taken: exists and is not an empty folder"):
        ex.export_timm(tiny(), tmp_path / "taken")
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep"


def test_a_finetune_checkpoint_is_a_source(tmp_path):
    """An interrupted run has only checkpoint.pt: model config, preprocessing and classes inside."""
    model = tiny(pool="mean", class_token=False)
    state = {"format": "tinyvit.finetune", "version": 1, "arch": "vit", "model_config": model.cfg.to_dict(),
             "preprocess": CROP.to_dict(), "eval_preprocess": model.preprocess.to_dict(),  # training's, evaluation's
             "classes": [f"k{i}" for i in range(10)], "model": model.state_dict(), "optimizer": {}}
    torch.save(state, tmp_path / "checkpoint.pt")
    out = ex.export(tmp_path / "checkpoint.pt", "timm", tmp_path / "timm")
    config = json.loads((out / "config.json").read_text())
    assert config["label_names"][4] == "k4"
    assert config["pretrained_cfg"]["crop_mode"] == "squash"  # the evaluation preprocessing, not training's crop
    with torch.no_grad():
        torch.testing.assert_close(quiet(tinyvit.load_pretrained, out)(X), model(X))

    # Values checked as load_pretrained checks them; a checkpoint without its evaluation preprocessing refused.
    for name, change, match in [
        ("nan", lambda w: w["pos_embed"].fill_(float("nan")), "NaN or Inf values"),
        ("int", lambda w: w.update({"head.weight": w["head.weight"].to(torch.int32)}), "wrong dtype"),
        ("old", None, "does not record the preprocessing its model is evaluated with"),
    ]:
        bad = {**state, "model": {k: v.clone() for k, v in state["model"].items()}}
        if change is None:
            del bad["eval_preprocess"]
        else:
            change(bad["model"])
        torch.save(bad, tmp_path / f"{name}.pt")
        with pytest.raises(ValueError, match=match):
            ex.export(tmp_path / f"{name}.pt", "hf", tmp_path / f"out-{name}")
        assert not (tmp_path / f"out-{name}").exists()
    bad = {**state, "model_config": {**state["model_config"], "depth": 1_000_000}}
    torch.save(bad, tmp_path / "deep.pt")
    with pytest.raises(ValueError, match="depth=1000000, but the weights hold 2 blocks"):
        ex.export(tmp_path / "deep.pt", "hf", tmp_path / "out-deep")


def test_an_export_is_written_beside_and_renamed_into_place(tmp_path, monkeypatch):
    run = tmp_path / "run"
    tinyvit.save_pretrained(tiny(), run)
    seen = []
    write = ex.write_atomic

    def first_file_then_killed(path, fn):
        seen.append((path.name, (tmp_path / "hf").exists()))
        write(path, fn)
        raise KeyboardInterrupt  # as if killed after the first file

    monkeypatch.setattr(ex, "write_atomic", first_file_then_killed)
    with pytest.raises(KeyboardInterrupt):
        ex.export(run, "hf", tmp_path / "hf")
    assert seen == [("model.safetensors", False)] and not (tmp_path / "hf").exists()
    monkeypatch.undo()
    (tmp_path / "empty").mkdir()  # an empty --out is still accepted
    for out in (tmp_path / "hf", tmp_path / "empty"):
        ex.export(run, "hf", out)
        assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "hf", "run"]  # no staging folder left

    # What a SIGKILL after the first file left before: weights without their config. Refused, not guessed.
    (tmp_path / "empty" / "config.json").unlink()
    (tmp_path / "empty" / "preprocessor_config.json").unlink()
    with pytest.raises(tinyvit.CheckpointError, match="weights without config.json"):
        tinyvit.load_pretrained(tmp_path / "empty")


def test_a_file_of_a_run_is_loaded_and_exported_as_the_run(tmp_path, capsys):
    from tinyvit import finetune, rundir

    run = tmp_path / "run"
    assert finetune.main(["--model", "vit_tiny_patch16_224", "--weights", "none", "--image-size", "16",
                          "--override", "patch_size=8,dim=32,depth=1,num_heads=2,mlp_dim=64", "--dataset", "digits",
                          "--limit-train", "32", "--limit-val", "16", "--batch-size", "16", "--num-workers", "0",
                          "--no-progress", "--epochs", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    whole = quiet(tinyvit.load_pretrained, run)
    assert whole.preprocess.resize_size is None  # 8-px digits: straight to 16 px, no crop
    assert quiet(tinyvit.load_pretrained, run / "model.safetensors").preprocess == whole.preprocess
    with pytest.raises(tinyvit.CheckpointError, match="a tinyvit resume checkpoint"):
        tinyvit.load_pretrained(run / "checkpoint.pt")

    def exported_preprocessing(source, out):
        ex.export(source, "timm", out)
        return quiet(tinyvit.load_pretrained, out).preprocess

    assert exported_preprocessing(run / "checkpoint.pt", tmp_path / "a") == whole.preprocess
    assert exported_preprocessing(run / "classes.json", tmp_path / "b") == whole.preprocess
    # A run stopped before it wrote its model: exported from checkpoint.pt, evaluated as the run would be.
    for name in ("model.safetensors", "config.json", "summary.json"):
        (run / name).unlink()
    assert exported_preprocessing(run, tmp_path / "c") == whole.preprocess
    assert exported_preprocessing(run / "checkpoint.pt", tmp_path / "d") == whole.preprocess
    with pytest.raises(tinyvit.CheckpointError, match="a file of a tinyvit.finetune run; the run in .* has not finished"):
        tinyvit.load_pretrained(run / "metrics.jsonl")
    # checkpoint.pt changed since the run wrote it: refused, as --resume refuses it.
    blob = bytearray((run / "checkpoint.pt").read_bytes())
    blob[len(blob) // 2] ^= 1
    (run / "checkpoint.pt").write_bytes(bytes(blob))
    with pytest.raises(tinyvit.CheckpointError, match="checkpoint.pt: corrupt or changed since the run wrote it"):
        ex.export(run, "hf", tmp_path / "e")
    assert not (tmp_path / "e").exists()
    assert rundir.MANIFEST in {p.name for p in run.iterdir()}


def test_cli(tmp_path, capsys):
    run = tmp_path / "run"
    tinyvit.save_pretrained(tiny(), run)
    assert ex.main([str(run), "--to", "timm", "--out", str(tmp_path / "timm")]) == 0
    printed = capsys.readouterr().out
    assert "model.safetensors" in printed and f"timm.create_model('local-dir:{tmp_path / 'timm'}'" in printed
    assert ex.main([str(run), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert 'backend="pil"' in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"^tinyvit.export: error: --out .*hf: exists"):
        ex.main([str(run), "--to", "hf", "--out", str(tmp_path / "hf")])
    tinyvit.save_pretrained(tiny(pos_embed="sincos"), tmp_path / "sincos")
    with pytest.raises(SystemExit, match=r"^tinyvit.export: error: cannot export to hf: ViTConfig.pos_embed"):
        ex.main([str(tmp_path / "sincos"), "--to", "hf", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="no such run directory"):
        ex.main([str(tmp_path / "nothing"), "--to", "hf", "--out", str(tmp_path / "y")])


# ---------------------------------------------------------------------------------------------
# timm's model interface, against timm on the same weights
# ---------------------------------------------------------------------------------------------


def _timm_twin(model: VisionTransformer):
    """timm's model built from the export's own model_args, with the same weights."""
    import timm

    name, args = ex.timm_model_args(model)
    ref = timm.create_model(name, pretrained=False, num_classes=model.cfg.num_classes, **args).eval()
    ref.load_state_dict(ex.timm_state_dict(model), strict=True)
    return ref


@pytest.mark.parametrize("kw", [{}, {"distilled": True}, {"pool": "mean", "class_token": False}])
@pytest.mark.parametrize("call", [
    dict(),
    dict(indices=1),
    dict(indices=[0], norm=True, output_fmt="NLC"),
    dict(indices=[-1, 0], return_prefix_tokens=True),
    dict(indices=[0], stop_early=True),
    dict(indices=2, intermediates_only=True, output_fmt="NLC", return_prefix_tokens=True),
])
def test_forward_intermediates_matches_timm(kw, call):
    model = tiny(**kw)
    ref = _timm_twin(model)
    with torch.no_grad():
        ours, theirs = model.forward_intermediates(X, **call), ref.forward_intermediates(X, **call)
    flat = lambda o: [t for t in torch.utils._pytree.tree_leaves(o)]  # noqa: E731
    assert [t.shape for t in flat(ours)] == [t.shape for t in flat(theirs)]
    for a, b in zip(flat(ours), flat(theirs)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_forward_intermediates_bad_arguments_are_named():
    model = tiny()
    with pytest.raises(ValueError, match="indices=3: the last-n count must be 1 to 2"):
        model.forward_intermediates(X, indices=3)
    with pytest.raises(ValueError, match="block 5 is out of range for 2 blocks"):
        model.forward_intermediates(X, indices=[5])
    with pytest.raises(ValueError, match="output_fmt='NHWC'"):
        model.forward_intermediates(X, output_fmt="NHWC")


def test_forward_intermediates_nchw_needs_a_patch_grid():
    """Blocks that change the token count (TokenLearner) have no map to return: NLC only."""
    model = tiny()
    last = model.blocks[1].forward
    model.blocks[1].forward = lambda x, **kw: last(x)[:, :9]  # class token + 8 tokens
    with pytest.raises(ValueError, match=r"\[16, 8\] tokens, not a 4x4 patch grid; use 'NLC'"):
        model.forward_intermediates(X)
    assert model.forward_intermediates(X, output_fmt="NLC", intermediates_only=True)[1].shape == (3, 8, 64)


def test_distilled_pre_logits_and_headless_forward_match_timm():
    """timm's distilled DeiT pools the mean of the class and distillation tokens; so does tinyvit,
    in forward_head(pre_logits=True) and in forward after reset_classifier(0)."""
    model = tiny(distilled=True)
    ref = _timm_twin(model)
    with torch.no_grad():
        feats = model.forward_features(X)
        torch.testing.assert_close(feats, ref.forward_features(X), rtol=1e-5, atol=1e-5)
        pooled = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pooled, ref.forward_head(ref.forward_features(X), pre_logits=True), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pooled, (feats[:, 0] + feats[:, 1]) / 2)
        model.reset_classifier(0)
        ref.reset_classifier(0)
        torch.testing.assert_close(model(X), ref(X), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(X), pooled)


@pytest.mark.parametrize("kw", [{}, {"distilled": True}, {"pool": "mean", "fc_norm": True}])
def test_model_attributes_match_timm(kw):
    model = tiny(**kw)
    ref = _timm_twin(model)
    assert model.num_features == ref.num_features == 64 and model.num_classes == ref.num_classes == 10
    ours, theirs = model.get_classifier(), ref.get_classifier()
    if kw.get("distilled"):
        assert [m.weight.shape for m in ours] == [m.weight.shape for m in theirs]
    else:
        assert torch.equal(ours.weight, theirs.weight)
    model.reset_classifier(3)
    assert model.num_classes == 3 and model(X).shape == (3, 3)


def test_reset_classifier_global_pool():
    model = tiny()
    model.reset_classifier(5, global_pool="avg")
    assert model.cfg.pool == "mean" and model(X).shape == (3, 5)
    with pytest.raises(ValueError, match="global_pool='avg' on a distilled DeiT"):
        tiny(distilled=True).reset_classifier(5, global_pool="avg")
    with pytest.raises(ValueError, match="global_pool='max'"):
        model.reset_classifier(5, global_pool="max")


@pytest.mark.parametrize("class_token", [True, False])
def test_timm_fc_norm_checkpoint_loads_and_matches(tmp_path, class_token):
    """A timm ViT built the MAE fine-tuning way (global_pool='avg', fc_norm=True: norm is the identity,
    fc_norm normalises the pooled vector) loads through convert.py and gives timm's logits."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    ref = perturb(TimmViT(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=10,
                          global_pool="avg", fc_norm=True, class_token=class_token))
    assert "fc_norm.weight" in ref.state_dict() and "norm.weight" not in ref.state_dict()
    torch.save(ref.state_dict(), tmp_path / "mae.pth")
    model = quiet(tinyvit.load_pretrained, tmp_path / "mae.pth", num_heads=2)
    assert model.cfg.fc_norm and model.cfg.pool == "mean" and isinstance(model.norm, torch.nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(model(X), ref(X), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.forward_head(model.forward_features(X), pre_logits=True),
                                   ref.forward_head(ref.forward_features(X), pre_logits=True), rtol=1e-5, atol=1e-5)


def test_fc_norm_trains_in_every_unfreeze_mode():
    from tinyvit.freeze import apply

    model = tiny(pool="mean", fc_norm=True)
    apply(model, "head")
    assert model.fc_norm.weight.requires_grad and not model.blocks[-1].norm1.weight.requires_grad


def test_resnet_forward_intermediates_match_timm():
    import timm

    model = tiny_resnet("bottleneck", (1, 2, 1, 1))
    ref = timm.create_model("resnet50", layers=[1, 2, 1, 1], num_classes=10).eval()
    ref.load_state_dict(ex.timm_state_dict(model), strict=True)
    x = torch.randn(2, 3, 64, 64)
    assert model.num_features == ref.num_features and model.get_classifier() is model.fc
    for call in [dict(), dict(indices=2), dict(indices=[0, 3], stop_early=True, intermediates_only=True)]:
        with torch.no_grad():
            ours, theirs = model.forward_intermediates(x, **call), ref.forward_intermediates(x, **call)
        for a, b in zip(torch.utils._pytree.tree_leaves(ours), torch.utils._pytree.tree_leaves(theirs)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
