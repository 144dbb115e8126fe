# Two commands do all the set-up on a fresh machine (README.md):
#   make demo    the data-scaling study on real digits, offline: ViT vs ResNet-18 from scratch (7 min 18 s measured, 2 cores)
#   make test    the test suite (what CI runs, through .ci/run)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
OUT    ?= runs

.PHONY: study demo scaling sweep levers test test-gpu bench docs clean

# The virtual environment, rebuilt when pyproject.toml changes. `pip install torch torchvision`
# as a Linux user gets it: the CUDA build, which also runs on the CPU.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test,data,docs]'
	touch $@

# Malpure et al. 2021: ImageNet-pretrained ViT-B/16, DeiT-B and ResNet-50, only the last block /
# stage plus a new head trainable, fine-tuned on CIFAR-10 (downloaded into data/), then compared.
# --no-augment lets every epoch after the first train on the cached output of the frozen prefix.
STUDY := --dataset cifar10 --data-dir data --unfreeze last --no-augment
study: $(VENV)/.installed
	$(PY) -m tinyvit.finetune --model vit_base_patch16_224 $(STUDY) --out $(OUT)/study/vit_b16
	$(PY) -m tinyvit.finetune --model deit_base_patch16_224 $(STUDY) --out $(OUT)/study/deit_b
	$(PY) -m tinyvit.finetune --model resnet50 $(STUDY) --out $(OUT)/study/resnet50
	$(PY) -m tinyvit.compare $(OUT)/study/vit_b16 $(OUT)/study/deit_b $(OUT)/study/resnet50

# The data-scaling study, offline (tinyvit/study.py): ViT against ResNet-18, both from scratch with
# the scratch recipe (tinyvit/recipe.py; MixUp/CutMix off for runs this short), on scikit-learn's
# real handwritten digits at 4 nested training-set sizes and 2 seeds. Every run of a model makes
# the same number of optimizer steps of 128 images (to within a whole epoch), whatever its subset, enough to converge on the
# full split: the ViT 55 epochs of it (605 steps), the ResNet 8 (88 steps; README "Studies").
# The digits train from one tensor, augmented a batch at a time (tinyvit/augment.py): on 2 cores a
# step costs about 50 ms for the ViT and 230 ms for the ResNet: 7 min 18 s measured on an idle
# 2-core machine (2026-12-02); writes $(OUT)/demo/results.csv, results.md and scaling.png.
DIGITS_VIT := vit=vit_tiny_patch16_224 --image-size 16 --epochs 55 --override patch_size=4,dim=64,depth=6,num_heads=4,mlp_dim=256,pool=mean
DIGITS := --dataset digits --recipe scratch --mixup 0 --cutmix 0 --batch-size 128 --num-workers 0
demo: $(VENV)/.installed
	$(PY) -m tinyvit.study --out $(OUT)/demo --models '$(DIGITS_VIT)' 'resnet18=resnet18 --image-size 32 --epochs 8' \
		--train-sizes 0.05 0.15 0.4 1.0 --seeds 0 1 --title "digits, from scratch" -- $(DIGITS)

# The same study on CIFAR-10 and MNIST (downloaded into data/ once; not run here: hours on a CPU,
# a GPU is the place for it):
# the ViT on 4-pixel patches of the 32-pixel images, 5 sizes from 1% to all 50,000 / 60,000.
CIFAR_VIT := 'vit=vit_tiny_patch16_224 --image-size 32 --override patch_size=4,dim=192,depth=6,num_heads=3,mlp_dim=384'
scaling: $(VENV)/.installed
	$(PY) -m tinyvit.study --out $(OUT)/scaling-cifar10 --models $(CIFAR_VIT) 'resnet18=resnet18 --image-size 32' \
		--train-sizes 0.01 0.03 0.1 0.3 1.0 --seeds 0 1 -- --dataset cifar10 --data-dir data --recipe scratch --epochs 50
	$(PY) -m tinyvit.study --out $(OUT)/scaling-mnist --models $(CIFAR_VIT) 'resnet18=resnet18 --image-size 32' \
		--train-sizes 0.01 0.03 0.1 0.3 1.0 --seeds 0 1 -- --dataset mnist --data-dir data --recipe scratch --epochs 10

# The architecture sweep on the digits, offline: patch size x patch embedding x positions, 2 seeds,
# 16 runs of 330 steps of 128 images: grouped bars in $(OUT)/sweep/sweep.png. Not timed here; patch 2 makes 64
# tokens, so expect the better part of an hour on 2 CPU cores.
sweep: $(VENV)/.installed
	$(PY) -m tinyvit.study --out $(OUT)/sweep --models 'vit=vit_tiny_patch16_224 --image-size 16 --override dim=64,depth=6,num_heads=4,mlp_dim=256,pool=mean' \
		--override patch_size=2,4 patch_embed=linear,conv pos_embed=learned,sincos --seeds 0 1 \
		--title "digits: patch size x embedding x positions" -- $(DIGITS) --epochs 30

# The levers study: what closes the small-data gap between the demo's ViT and ResNet-18 on the
# digits, each lever alone and one combination, at the demo's 4 training sizes and 3 seeds. Arms: the
# plain ViT; MAE (tinyvit.pretrain on the 1,347 training images without labels, one run per seed,
# then fine-tuning with MAE's mean pooling + fc_norm and layer-wise lr decay 0.75); Shifted Patch
# Tokenization + Locality Self-Attention; the conv stem; distillation from the ResNet-18 run on the
# same images and seed; the conv stem distilled (the best single lever of a one-seed pilot, with the
# one lever that combines with it: MAE refuses the conv stem, whose receptive fields would leak the
# hidden patches); MAE + LSA (the two levers that helped and combine); ResNet-18. The plot adds 1-NN and logistic regression on raw pixels. Budgets: the
# demo's (605 steps of 128 images per ViT run, 88 per ResNet run; the pilot's curves still rose after
# 300 steps), 100 MAE epochs (2,200 steps of 64) per seed. 78 minutes measured on a 2-core CPU
# (2026-12-02; studies/digits-levers); LEVERS_SEEDS=0 takes about a third. A smoke run of the same arms:
# make levers OUT=/tmp/smoke LEVERS_SIZES='0.05 0.15' LEVERS_SEEDS=0 LEVERS_MAE_EPOCHS=1 LEVERS_EXTRA='--steps 3'.
LEVERS_VIT := vit_tiny_patch16_224 --image-size 16 --override patch_size=4,dim=64,depth=6,num_heads=4,mlp_dim=256,pool=mean --epochs 55
LEVERS_SIZES ?= 0.05 0.15 0.4 1.0
LEVERS_SEEDS ?= 0 1 2
LEVERS_MAE_EPOCHS ?= 100
LEVERS_EXTRA ?=
LEVERS_MAE := --epochs $(LEVERS_MAE_EPOCHS) --blr 1.5e-3 --batch-size 64 --decoder-dim 64 --decoder-depth 2 --decoder-heads 4 --num-workers 0
levers: $(VENV)/.installed
	$(PY) -m tinyvit.study --out $(OUT)/levers --models 'vit=$(LEVERS_VIT)' \
		'vit_mae=$(LEVERS_VIT) --override fc_norm=True --layer-decay 0.75' \
		'vit_spt_lsa=$(LEVERS_VIT) --override patch_embed=spt,lsa=True' \
		'vit_conv_stem=$(LEVERS_VIT) --override patch_embed=conv_stem' \
		'vit_distilled=$(LEVERS_VIT)' \
		'vit_conv_stem_distilled=$(LEVERS_VIT) --override patch_embed=conv_stem' \
		'vit_mae_lsa=$(LEVERS_VIT) --override lsa=True,fc_norm=True --layer-decay 0.75' \
		'resnet18=resnet18 --image-size 32 --epochs 8' \
		--pretrain 'vit_mae=$(LEVERS_MAE)' 'vit_mae_lsa=$(LEVERS_MAE)' \
		--teacher vit_distilled=resnet18 vit_conv_stem_distilled=resnet18 --reference knn logreg \
		--train-sizes $(LEVERS_SIZES) --seeds $(LEVERS_SEEDS) $(LEVERS_EXTRA) --title "digits: levers for a small-data ViT" -- $(DIGITS)

test: $(VENV)/.installed
	$(PY) -m pytest -m "not gpu" -q

# On a machine with a CUDA GPU: the kernel tests compiled for real, then the benchmarks.
test-gpu: $(VENV)/.installed
	$(PY) -m pytest -m gpu -q

bench: $(VENV)/.installed
	$(PY) -m bench all

# The documentation site, offline: README, ARCHITECTURE, every tutorial executed as a notebook in its
# own kernel (output and figures inline; one that raises fails the build), a page per study, the API
# from the docstrings; a Sphinx warning (a broken link, a malformed docstring) fails it too (-T: with
# the full traceback, so a failing tutorial shows its cell and error). Open
# docs/_build/html/index.html. docs/conf.py says how; tests/test_docs_site.py
# checks the result in headless Chromium.
docs: $(VENV)/.installed
	$(PY) -m sphinx -b html -j 2 -W --keep-going -T -c docs -d docs/_build/doctrees . docs/_build/html

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis docs/_build docs/_generated
