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
	$(PY) -m pip install -e '.[test]'
	touch $@

# Malpure et al. 2021: ImageNet-pretrained ViT-B/16 and ResNet-50, only the last block / stage
# plus a head trainable, fine-tuned on CIFAR-10 (downloaded into data/), compared on validation.
study: $(VENV)/.installed
	$(PY) -m tinyvit.finetune --model vit_base_patch16_224 --unfreeze last --dataset cifar10 --data-dir data --out $(OUT)/vit_base_last
	$(PY) -m tinyvit.finetune --model resnet50 --unfreeze last --dataset cifar10 --data-dir data --out $(OUT)/resnet50_last
	$(PY) -m tinyvit.compare $(OUT)/vit_base_last $(OUT)/resnet50_last

# The same pipeline offline, in a few minutes on 2 CPU cores: a small ViT and ResNet from scratch on
# the synthetic dataset (no download), last block + head trainable after a short warm start.
demo: $(VENV)/.installed
	$(PY) -m tinyvit.finetune --model vit_tiny_patch16_224 --weights none --dataset synthetic --image-size 32 --unfreeze all --epochs 3 --out $(OUT)/demo_vit --force
	$(PY) -m tinyvit.finetune --model resnet18 --weights none --dataset synthetic --image-size 32 --unfreeze all --epochs 3 --out $(OUT)/demo_resnet --force
	$(PY) -m tinyvit.compare $(OUT)/demo_vit $(OUT)/demo_resnet

test: $(VENV)/.installed
	$(PY) -m pytest -m "not gpu" -q

# On a machine with a CUDA GPU: the kernel tests compiled for real, then the benchmarks.
test-gpu: $(VENV)/.installed
	$(PY) -m pytest -m gpu -q

bench: $(VENV)/.installed
	$(PY) -m bench all

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
