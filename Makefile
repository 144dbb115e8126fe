# Two commands do all the set-up on a fresh machine (README.md):
#   make demo    the data-scaling study on real digits, offline: ViT vs ResNet-18 from scratch (7 min 18 s measured, 2 cores)
#   make test    the test suite (what CI runs, through .ci/run)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
OUT    ?= runs
EXTRAS := test,data,docs

.PHONY: study demo scaling sweep levers semi semi-tau transfer transfer-mae test test-latest lock test-gpu bench docs clean

# The virtual environment, rebuilt when pyproject.toml or constraints.txt changes: pyproject.toml's
# ranges, pinned to the exact versions CI tested (constraints.txt, written by `make lock`), so a new
# release upstream cannot turn a fresh clone red unannounced. `pip install torch torchvision` as a
# Linux user gets the CUDA build, which also runs on the CPU.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

# The same suite against the newest releases of everything, in a venv of its own: how a new release
# is met deliberately. When it passes (or once the code is fixed), `make lock` refreshes constraints.txt,
# committed with a message that says which versions changed.
test-latest:
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --upgrade pip
	.venv-latest/bin/python -m pip install --upgrade --upgrade-strategy eager -e '.[$(EXTRAS)]'
	.venv-latest/bin/python -m pytest -m "not gpu" -q

# constraints.txt: the newest releases that satisfy pyproject.toml, resolved in a throw-away venv and
# frozen with the date, Python version and platform they were resolved on.
lock:
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PYTHON) -m venv "$$tmp/venv" && "$$tmp/venv/bin/python" -m pip install -q --upgrade pip && \
	"$$tmp/venv/bin/python" -m pip install -q -e '.[$(EXTRAS)]' && \
	{ echo "# The exact versions CI installs (make test, make demo; Makefile): written by \`make lock\` on $$(date -u +%F)"; \
	  echo "# with $$("$$tmp/venv/bin/python" -V) on $$(uname -s) $$(uname -m), from pyproject.toml's dependencies and [$(EXTRAS)]."; \
	  echo "# \`make test-latest\` runs the suite on the newest releases; refresh this file in a commit naming what changed."; \
	  "$$tmp/venv/bin/python" -m pip freeze --exclude-editable; } > constraints.txt.new && mv constraints.txt.new constraints.txt

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
# 300 steps), 100 MAE epochs (2,200 steps of 64) per seed. Two runs at a time (LEVERS_JOBS), each a
# process on half the cores: these small models keep one thread busy better than two
# (bench.study_jobs). 72 minutes measured on a 2-core AMD EPYC (2026-12-06), against 105 there with
# LEVERS_JOBS=1 (in one process on both cores, as the committed table was made: 78 minutes on the
# Intel machine; studies/digits-levers); LEVERS_SEEDS=0 takes about a third. A smoke run of the same arms:
# make levers OUT=/tmp/smoke LEVERS_SIZES='0.05 0.15' LEVERS_SEEDS=0 LEVERS_MAE_EPOCHS=1 LEVERS_EXTRA='--steps 3'.
LEVERS_VIT := vit_tiny_patch16_224 --image-size 16 --override patch_size=4,dim=64,depth=6,num_heads=4,mlp_dim=256,pool=mean --epochs 55
LEVERS_SIZES ?= 0.05 0.15 0.4 1.0
LEVERS_SEEDS ?= 0 1 2
LEVERS_MAE_EPOCHS ?= 100
LEVERS_EXTRA ?=
LEVERS_JOBS ?= 2
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
		--train-sizes $(LEVERS_SIZES) --seeds $(LEVERS_SEEDS) --jobs $(LEVERS_JOBS) $(LEVERS_EXTRA) --title "digits: levers for a small-data ViT" -- $(DIGITS)

# The semi-supervised lever (studies/digits-semi, issue 34): FixMatch (tinyvit/fixmatch.py) for the
# demo's ViT, the levers' MAE-pretrained ViT and ResNet-18, each against the same model trained on the
# labels alone, at the demo's three smaller training sizes (at the full split nothing is left
# unlabelled) and 3 seeds; the unlabelled images are the rest of the training split, their labels
# never read. Every arm with label smoothing off, as the paper (with --recipe scratch's 0.1 no
# prediction reaches tau 0.95), and the demo's budgets (ViT 605 steps, ResNet 88); mu 2 unlabelled
# batches per labelled one, not the paper's 7 (2.8x the images a step: an estimated 9-10 minutes a ViT
# run here). The plot adds label spreading on raw pixels beside 1-NN and logistic regression.
# Measured: 103 minutes on a 2-core AMD EPYC (6 MAE pretraining runs in 630 s, 54 runs in 5,532 s);
# SEMI_SEEDS=0 takes about a third. A smoke run:
# make semi OUT=/tmp/smoke SEMI_SIZES=0.05 SEMI_SEEDS=0 LEVERS_MAE_EPOCHS=1 SEMI_EXTRA='--steps 3'.
SEMI_SIZES ?= 0.05 0.15 0.4
SEMI_SEEDS ?= 0 1 2
SEMI_MU ?= 2
SEMI_EXTRA ?=
FIXMATCH := --unlabelled rest --mu $(SEMI_MU)
MAE_FINETUNE := --override fc_norm=True --layer-decay 0.75
semi: $(VENV)/.installed
	$(PY) -m tinyvit.study --out $(OUT)/semi --models 'vit_fixmatch=$(LEVERS_VIT) $(FIXMATCH)' \
		'resnet18_fixmatch=resnet18 --image-size 32 --epochs 8 $(FIXMATCH)' 'vit=$(LEVERS_VIT)' \
		'resnet18=resnet18 --image-size 32 --epochs 8' 'vit_mae_fixmatch=$(LEVERS_VIT) $(MAE_FINETUNE) $(FIXMATCH)' \
		'vit_mae=$(LEVERS_VIT) $(MAE_FINETUNE)' \
		--pretrain 'vit_mae_fixmatch=$(LEVERS_MAE)' 'vit_mae=$(LEVERS_MAE)' --reference knn logreg spreading \
		--train-sizes $(SEMI_SIZES) --seeds $(SEMI_SEEDS) $(SEMI_EXTRA) --title "digits: FixMatch on the unlabelled rest" \
		-- $(DIGITS) --label-smoothing 0

# The threshold's ablation for `make semi` (studies/digits-semi/README.md): its three FixMatch arms at tau
# 0.7 instead of 0.95, at 67 labels and 3 seeds, written to $(OUT)/tau (29 minutes on a 2-core AMD EPYC).
semi-tau: $(VENV)/.installed
	$(PY) -m tinyvit.study --out $(OUT)/tau --models 'vit_fixmatch_tau0.7=$(LEVERS_VIT) $(FIXMATCH) --tau 0.7' \
		'resnet18_fixmatch_tau0.7=resnet18 --image-size 32 --epochs 8 $(FIXMATCH) --tau 0.7' \
		'vit_mae_fixmatch_tau0.7=$(LEVERS_VIT) $(MAE_FINETUNE) $(FIXMATCH) --tau 0.7' \
		--pretrain 'vit_mae_fixmatch_tau0.7=$(LEVERS_MAE)' --train-sizes 0.05 --seeds $(SEMI_SEEDS) $(SEMI_EXTRA) \
		--title "digits: FixMatch at tau 0.7, 67 labels" -- $(DIGITS) --label-smoothing 0

# Transfer learning with nothing downloaded (studies/digits-transfer, issue 32): the demo's ViT and
# ResNet-18 pretrained with labels on FractalDB (tinyvit/fractals.py: 100 categories x 100 instances at
# 32 px, cached in data/fractals/ once, 8,000 training / 2,000 held-out images), then fine-tuned on
# the digits at the demo's 4 training sizes and 3 seeds with --unfreeze head, last and all, against
# the same models from scratch (the demo's recipe). Every arm of a model makes the demo's number of
# optimizer steps (ViT 605, ResNet 88 of 128 images); head and last train on the frozen prefix's
# cached features (--recipe none --no-augment: no RandAugment, which would need the whole forward
# every step), at the learning rates of the pilots (README there). A finished pretraining run is
# kept; the study skips finished runs. 45 min 13 s measured on 2 shared cores (2026-12-05; writes
# $(OUT)/transfer/results.csv, results.md, scaling.png). TRANSFER_SEEDS=0 takes about a third.
TRANSFER_DATA := fractals:categories=100,instances=100,size=32,seed=0
TRANSFER_PRE := --dataset $(TRANSFER_DATA) --data-dir data --weights none --unfreeze all --num-workers 0 --no-progress
TRANSFER_VIT_PRE ?= --recipe scratch --mixup 0 --cutmix 0 --batch-size 128 --epochs 40
TRANSFER_RESNET_PRE ?= --batch-size 128 --lr 1e-3 --epochs 15
TRANSFER_SIZES ?= 0.05 0.15 0.4 1.0
TRANSFER_SEEDS ?= 0 1 2
TRANSFER_EXTRA ?=
TRANSFER := $(OUT)/transfer
TRANSFER_RESNET := resnet18 --image-size 32 --epochs 8
CACHED := --recipe none --no-augment
transfer: $(VENV)/.installed
	test -f $(TRANSFER)/pretrain-vit/summary.json || $(PY) -m tinyvit.finetune --model $(LEVERS_VIT) $(TRANSFER_PRE) \
		$(TRANSFER_VIT_PRE) --out $(TRANSFER)/pretrain-vit
	test -f $(TRANSFER)/pretrain-resnet18/summary.json || $(PY) -m tinyvit.finetune --model $(TRANSFER_RESNET) \
		$(TRANSFER_PRE) $(TRANSFER_RESNET_PRE) --out $(TRANSFER)/pretrain-resnet18
	$(PY) -m tinyvit.study --out $(TRANSFER) --models 'vit=$(LEVERS_VIT)' \
		'vit_head=$(LEVERS_VIT) --weights $(TRANSFER)/pretrain-vit --unfreeze head $(CACHED) --lr 1e-3' \
		'vit_last=$(LEVERS_VIT) --weights $(TRANSFER)/pretrain-vit --unfreeze last $(CACHED) --lr 1e-3' \
		'vit_all=$(LEVERS_VIT) --weights $(TRANSFER)/pretrain-vit' \
		'vit_last_random=$(LEVERS_VIT) --weights none --unfreeze last $(CACHED) --lr 1e-3' \
		'resnet18=$(TRANSFER_RESNET)' \
		'resnet18_head=$(TRANSFER_RESNET) --weights $(TRANSFER)/pretrain-resnet18 --unfreeze head $(CACHED) --lr 1e-2' \
		'resnet18_last=$(TRANSFER_RESNET) --weights $(TRANSFER)/pretrain-resnet18 --unfreeze last $(CACHED) --lr 3e-3' \
		'resnet18_all=$(TRANSFER_RESNET) --weights $(TRANSFER)/pretrain-resnet18' \
		'resnet18_last_random=$(TRANSFER_RESNET) --weights none --unfreeze last $(CACHED) --lr 3e-3' \
		--train-sizes $(TRANSFER_SIZES) --seeds $(TRANSFER_SEEDS) $(TRANSFER_EXTRA) \
		--title "digits: fractal pretraining, then head / last block / all" -- $(DIGITS)

# MAE on the fractals for the ViT (studies/digits-transfer/mae, issue 32's optional arm): no labels,
# so no category count to learn. The levers' MAE recipe (LEVERS_MAE) for 20 epochs of the 8,000
# training fractals at 16 px (2,500 steps of 64; the levers' MAE makes 2,200 on the digits), then on
# the digits at the demo's 4 sizes, seeds 0, 1, 2: the last block on the frozen encoder's cached
# features (as in `transfer`), and all layers as MAE fine-tunes (fc_norm, layer decay 0.75); against
# it, the last block of the levers' MAE encoder pretrained on the digits' own training images. 23 min
# measured on a 2-core AMD EPYC (2026-12-06, in two invocations: 2 min 42 s pretraining with the fractals
# drawn, 20 min 29 s the study with its 3 digit encoders). A smoke run: make transfer-mae OUT=/tmp/smoke TRANSFER_MAE_EPOCHS=1
# LEVERS_MAE_EPOCHS=1 TRANSFER_SEEDS=0 TRANSFER_EXTRA='--steps 3'.
TRANSFER_MAE := $(OUT)/transfer-mae
TRANSFER_MAE_EPOCHS ?= 20
transfer-mae: $(VENV)/.installed
	test -f $(TRANSFER_MAE)/mae-fractals/summary.json || $(PY) -m tinyvit.pretrain --method mae --model $(LEVERS_VIT) \
		--dataset $(TRANSFER_DATA) --data-dir data $(LEVERS_MAE) --epochs $(TRANSFER_MAE_EPOCHS) --seed 0 --no-progress --out $(TRANSFER_MAE)/mae-fractals
	$(PY) -m tinyvit.study --out $(TRANSFER_MAE) \
		--models 'vit_fmae_last=$(LEVERS_VIT) --override fc_norm=True --weights $(TRANSFER_MAE)/mae-fractals --unfreeze last $(CACHED) --lr 1e-3' \
		'vit_fmae_all=$(LEVERS_VIT) $(MAE_FINETUNE) --weights $(TRANSFER_MAE)/mae-fractals' \
		'vit_dmae_last=$(LEVERS_VIT) --override fc_norm=True --unfreeze last $(CACHED) --lr 1e-3' \
		--pretrain 'vit_dmae_last=$(LEVERS_MAE)' --train-sizes $(TRANSFER_SIZES) --seeds $(TRANSFER_SEEDS) $(TRANSFER_EXTRA) \
		--title "digits: MAE on fractals, then the last block or all layers" -- $(DIGITS)

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
	rm -rf $(VENV) .venv-latest *.egg-info .pytest_cache .hypothesis docs/_build docs/_generated
