# Two commands do all the set-up on a fresh machine (README.md):
#   make study   the fine-tuning study (needs the network for CIFAR-10 and the weights; `make demo` offline)
#   make test    the test suite (what CI runs, through .ci/run)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
OUT    ?= runs

.PHONY: study demo test test-gpu bench clean

# The virtual environment, rebuilt when pyproject.toml changes. `pip install torch torchvision`
# as a Linux user gets it: the CUDA build, which also runs on the CPU.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test,data]'
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

# The same pipeline offline, in a few minutes on 2 CPU cores: no download, so randomly initialised
# models on the generated `synthetic` dataset at 64 px, last block / stage + head trainable.
DEMO := --weights none --dataset synthetic --image-size 64 --unfreeze last --no-augment --lr 1e-3 \
	--epochs 4 --limit-train 2000 --limit-val 500 --force
demo: $(VENV)/.installed
	@echo "offline demo: random weights, synthetic data (the real study is 'make study', which needs the network)"
	$(PY) -m tinyvit.finetune --model vit_tiny_patch16_224 $(DEMO) --out $(OUT)/demo/vit_tiny
	$(PY) -m tinyvit.finetune --model resnet18 $(DEMO) --out $(OUT)/demo/resnet18
	$(PY) -m tinyvit.compare $(OUT)/demo/vit_tiny $(OUT)/demo/resnet18

test: $(VENV)/.installed
	$(PY) -m pytest -m "not gpu" -q

# On a machine with a CUDA GPU: the kernel tests compiled for real, then the benchmarks.
test-gpu: $(VENV)/.installed
	$(PY) -m pytest -m gpu -q

bench: $(VENV)/.installed
	$(PY) -m bench all

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
