# %% [markdown]
# # 7. Official weights: four formats, one model
#
# Nobody trains ViT-B from scratch to use it: the weights that matter were trained by Google
# (JAX), Facebook (DeiT, in timm's PyTorch code), torchvision, and republished by Hugging Face.
# Each stores the *same* computation under different names and layouts.
#
# **What you'll learn**
# - the four layouts side by side: Google's `.npz`, Hugging Face, timm/DeiT, torchvision;
# - how `tinyvit.load_pretrained` reads each (format sniffed from the bytes, family from the key
#   names, architecture from the shapes, every key and shape checked);
# - how to *prove* a converter right: same input, compare logits with the library that defines
#   the format. Here on small random models saved in each format, offline;
# - the quirks that cost accuracy: per-checkpoint preprocessing, LayerNorm eps, GELU flavour.
#
# With network access, the real files (`tinyvit/hub.py` lists every preset's URL or hub id and hash):
# ```bash
# # Google AugReg ViT-B/16 (vit_jax .npz)
# wget https://storage.googleapis.com/vit_models/augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224.npz
# # Hugging Face (transformers directory)
# hf download google/vit-base-patch16-224 --local-dir vit-base-patch16-224
# # timm (hub safetensors), and the DeiT release (.pth)
# hf download timm/vit_base_patch16_224.augreg2_in21k_ft_in1k model.safetensors --local-dir timm-vit-b16
# wget https://dl.fbaipublicfiles.com/deit/deit_base_distilled_patch16_224-df68dfff.pth
# # torchvision
# wget https://download.pytorch.org/models/vit_b_16-c867db91.pth
# ```
# then `tinyvit.load_pretrained("<any of them>")`, or simply
# `tinyvit.create_model("vit_base_patch16_224", pretrained=True)`, which downloads, checks the
# sha256 and caches.

# %%
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from matplotlib.figure import Figure

import tinyvit
from tinyvit.checkpoint import CheckpointError

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # a notebook runs in tutorials/
OUT = Path(os.environ.get("TINYVIT_TUTORIAL_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
# The checkpoints are written into a temporary folder inside OUT, removed at the end.
WORK = tempfile.TemporaryDirectory(dir=OUT, prefix="07_checkpoints_")
ROOT = Path(WORK.name)
x = torch.randn(2, 3, 32, 32)  # one batch, fed to every reference and every converted model

# The converter tests' helpers (tests/ is not part of the installed package): `perturb` moves every
# weight off its initial value, because fresh LayerNorms are the identity and fresh biases zero, so a
# converter that mixed them up would still pass; `npz_from_timm` writes Google's layout (below).
sys.path.insert(0, str(HERE.parent / "tests"))
from convert_fixtures import npz_from_timm, perturb  # noqa: E402

# %% [markdown]
# ## timm: the reference layout
#
# timm's `VisionTransformer` names (`patch_embed.proj`, `cls_token`, `pos_embed`,
# `blocks.i.attn.qkv`, …) are the de-facto schema, and tinyvit uses them too, so a timm state
# dict needs no renaming. A tiny timm model (32 px, patch 8, width 64, 2 blocks, 2 heads,
# 10 classes) is saved as a plain `.pth`, loaded back by tinyvit, and both are run on the same
# input. Width 64 is no official width, and a `.pth` does not record the number of heads, so
# we pass `num_heads=2` (for official widths tinyvit knows it).

# %%
from timm.models.deit import VisionTransformerDistilled  # noqa: E402
from timm.models.vision_transformer import VisionTransformer as TimmViT, _load_weights  # noqa: E402

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=10)
timm_ref = perturb(TimmViT(**TINY))
torch.save(timm_ref.state_dict(), ROOT / "timm_vit.pth")

results = {}  # format -> max |logit difference| against the defining library


def check(fmt: str, path: Path, reference_logits: torch.Tensor, **kwargs) -> torch.nn.Module:
    """Load `path` with tinyvit, compare its logits on x with the reference's, record and print."""
    model = tinyvit.load_pretrained(path, **kwargs)
    with torch.no_grad():
        diff = (model(x) - reference_logits).abs().max().item()
    results[fmt] = diff
    print(f"{fmt:12s} {path.name:22s} max |tinyvit - reference| = {diff:.1e}   preprocess: {model.preprocess}")
    assert diff < 1e-4, (fmt, diff)
    return model


with torch.no_grad():
    timm_logits = timm_ref(x)
model = check("timm", ROOT / "timm_vit.pth", timm_logits, num_heads=2)
print(model.cfg)

# %% [markdown]
# ## DeiT's release files
#
# Facebook's DeiT `.pth` files wrap the state dict: `{"model": state_dict, ...}`, and the
# distilled models add a `dist_token` and a second head `head_dist` (at eval, the two heads'
# logits are averaged). Their preprocessing is ImageNet's mean and std, not Google's.

# %%
deit_ref = perturb(VisionTransformerDistilled(**TINY))
torch.save({"model": deit_ref.state_dict()}, ROOT / "deit_distilled.pth")
with torch.no_grad():
    deit_logits = deit_ref(x)
deit = check("DeiT", ROOT / "deit_distilled.pth", deit_logits, num_heads=2)
print("distilled:", deit.cfg.distilled, " prefix tokens:", deit.num_prefix_tokens)

# %% [markdown]
# ## Google's `.npz`
#
# The original weights are flax parameter trees flattened into an `.npz` with `/`-joined keys,
# in JAX's layouts (google-research/vision_transformer `vit_jax/models_vit.py`). The converter undoes each:
#
# | npz key (block i) | shape | tinyvit / timm | transform |
# |---|---|---|---|
# | `embedding/kernel` | `[p, p, c, D]` (HWIO) | `patch_embed.proj.weight` `[D, c, p, p]` | permute(3, 2, 0, 1) |
# | `…/MultiHeadDotProductAttention_1/{query,key,value}/kernel` | `[D, H, Dh]` | rows of `blocks.i.attn.qkv.weight` | reshape(D, D).T, stack q, k, v |
# | `…/{query,key,value}/bias` | `[H, Dh]` | `qkv.bias` | reshape(-1), concatenate |
# | `…/out/kernel` | `[H, Dh, D]` | `attn.proj.weight` | reshape(D, D).T |
# | `…/MlpBlock_3/Dense_{0,1}/kernel` | `[in, out]` | `mlp.fc{1,2}.weight` | .T |
# | `…/LayerNorm_{0,2}/scale`, `encoder_norm/scale` | `[D]` | `norm1/2.weight`, `norm.weight` | — |
#
# (`LayerNorm_0`, `MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`: the old flax
# numbering, counted across the block.) There is no JAX here, so we write a Google-layout file
# from the timm model with the converter tests' fixture writer, `npz_from_timm` in
# `tests/convert_fixtures.py`: the table read right to left, written from vit_jax's names on its own,
# independently of `tinyvit.convert`. timm's own npz reader is the independent check that the
# file is right.

# %%
npz_from_timm(timm_ref, ROOT / "ViT-tiny.npz", num_heads=2)
timm_from_npz = TimmViT(**TINY).eval()
_load_weights(timm_from_npz, str(ROOT / "ViT-tiny.npz"))  # timm's reader of Google's files
with torch.no_grad():
    npz_logits = timm_from_npz(x)
print(f"timm reads the npz back: max |difference| = {(npz_logits - timm_logits).abs().max():.1e}")
google = check("Google npz", ROOT / "ViT-tiny.npz", npz_logits)  # the q kernel [D, H, Dh] tells the heads
print("heads read from the file:", google.cfg.num_heads)

# %% [markdown]
# Google's models were trained with the tanh approximation of GELU (flax's default), and every
# PyTorch port, tinyvit included, computes the exact erf GELU. The two differ by at most about
# 5e-4 per activation; the ports reproduce JAX's logits to ~1e-3. `load_pretrained(...,
# act="gelu_tanh")` switches to the approximation.

# %% [markdown]
# ## Hugging Face
#
# A `transformers` directory holds `config.json` and `model.safetensors`, with its own names
# (`vit.encoder.layer.i.attention.attention.query.weight`: q, k and v are separate) and with
# `layer_norm_eps = 1e-12` in the config. The weights were trained at 1e-6; tinyvit honours the
# config so that its logits are transformers' own (pass `norm_eps=1e-6` to reproduce timm).

# %%
import transformers  # noqa: E402
from transformers import ViTConfig as HFConfig, ViTForImageClassification  # noqa: E402

hf_ref = perturb(ViTForImageClassification(HFConfig(
    image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=256, num_labels=10)))
transformers.utils.logging.disable_progress_bar()
hf_ref.save_pretrained(ROOT / "hf-vit")
with torch.no_grad():
    hf_logits = hf_ref(pixel_values=x).logits
hf = check("HF", ROOT / "hf-vit", hf_logits)  # heads from config.json
print("LayerNorm eps taken from config.json:", hf.cfg.norm_eps)

# %% [markdown]
# ## torchvision
#
# torchvision's `vit_b_16` keeps q, k, v fused like timm (`in_proj_weight`, an
# `nn.MultiheadAttention`), calls the class token `class_token`, and its MLP layers `mlp.0` and
# `mlp.3` (the released file still says `mlp.linear_1`/`linear_2`; both are accepted).

# %%
from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT  # noqa: E402

tv_ref = perturb(TorchvisionViT(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=64,
                               mlp_dim=256, num_classes=10))
torch.save(tv_ref.state_dict(), ROOT / "vit_b_tiny.pth")
with torch.no_grad():
    tv_logits = tv_ref(x)
check("torchvision", ROOT / "vit_b_tiny.pth", tv_logits, num_heads=2)

# %% [markdown]
# ## Side by side
#
# The same tensor, the first block's query weight, under each format's name, read from the
# files just written:

# %%
from tinyvit.checkpoint import read_tensors  # noqa: E402

files = {"timm": "timm_vit.pth", "DeiT": "deit_distilled.pth", "Google npz": "ViT-tiny.npz",
         "HF": "hf-vit/model.safetensors", "torchvision": "vit_b_tiny.pth"}
for fmt, name in files.items():
    tensors, _ = read_tensors(ROOT / name)
    key = next(k for k in tensors if any(s in k for s in ("0.attn.qkv.weight", "_0/MultiHeadDotProductAttention_1/query/kernel",
                                                            "0.attention.attention.query.weight", "_0.self_attention.in_proj_weight")))
    print(f"{fmt:12s} {len(tensors):3d} tensors   {key:72s} {tuple(tensors[key].shape)}")

# %% [markdown]
# ## Preprocessing travels with the weights
#
# Every loaded model carries `model.preprocess`: Google's weights expect pixels in [-1, 1]
# (mean = std = 0.5), DeiT's and torchvision's the ImageNet statistics, with different resize
# rules. Feeding one the other's is the classic silent accuracy loss (staghado/vit.cpp#18 hard-coded the
# ImageNet statistics for an AugReg model). The
# `Preprocess` values printed above were chosen in this order: a preset named with `name=`,
# else the file's own `preprocessor_config.json` (HF) or `pretrained_cfg` (timm hub), else the
# family (a bare timm `.pth` is taken as Google-derived, a `{"model": ...}` wrapper as DeiT), all
# scaled to the file's resolution (32 px here). `model.preprocess.eval_transform()` turns one into
# a torchvision transform for PIL images.
#
# ## Strict, and clear when it fails
#
# A converter that skips what it does not recognise (`strict=False`) loads half a model without
# a word. tinyvit refuses, and names the file and the keys. Drop one tensor from the timm file:

# %%
broken = timm_ref.state_dict()
del broken["blocks.1.mlp.fc2.bias"]
torch.save(broken, ROOT / "broken.pth")
try:
    tinyvit.load_pretrained(ROOT / "broken.pth", num_heads=2)
    raise AssertionError("a file with a missing tensor loaded")
except CheckpointError as e:
    print(f"CheckpointError: {e}")
    assert "blocks.1.mlp.fc2.bias" in str(e)

# %% [markdown]
# A new head for another number of classes is explicit, and says what it dropped:

# %%
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    five = tinyvit.load_pretrained(ROOT / "timm_vit.pth", num_heads=2, num_classes=5)
print("head:", five.head, "|", caught[0].message if caught else "no warning")
assert five.head.out_features == 5 and caught

# %%
fig = Figure(figsize=(6, 3), layout="constrained")
ax = fig.subplots()
ax.barh(list(results)[::-1], [max(v, 1e-10) for v in list(results.values())[::-1]])
ax.axvline(1e-4, color="C3", ls="--", label="tolerance 1e-4")
ax.set(xscale="log", xlabel="max |logit difference| vs the defining library", title="tinyvit.load_pretrained, fp32")
ax.legend()
fig.savefig(OUT / "07_converter_check.png", dpi=100)
print("saved", OUT / "07_converter_check.png")
WORK.cleanup()

# %% [markdown]
# **Next:** [08_finetune.py](08_finetune.py) puts a checkpoint to work: fine-tuning a single
# block on a new dataset.
