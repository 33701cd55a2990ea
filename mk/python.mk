# Python package targets; the top-level Makefile includes this file.
#
#   make venv        create .venv and install the pinned build/test/lint dependencies
#   make py-install  build gopy into .tools/bin and `pip install .` into .venv
#   make py-test     py-install, then pytest python/tests
#   make dev         the fast loop: the extension built in place (again only when Go changes)
#   make dev-test    dev, then pytest on python/ as it is (no install)
#   make lint        ruff check + format check, mypy on the package, gofmt, go vet
#   make py-bench    py-install, then bench/bench_python.py (table + PNG)
#
# Needs only Go >= 1.25, Python >= 3.10 (with venv), gcc and make.

GO        ?= go
PYTHON    ?= python3
VENV      ?= .venv
VPY       := $(VENV)/bin/python
TOOLS_BIN := $(CURDIR)/.tools/bin
PY_REQS   := python/requirements-dev.txt
PYTEST_ARGS ?= -q
T         ?= .
GO_SRC    := $(shell find gdiv pybridge -name '*.go' -not -name '*_test.go' 2>/dev/null) go.mod go.sum
DEV_STAMP := python/gdiv/.dev-build

.PHONY: venv py-tools py-install py-test py-bench py-bench-torch bench-step bench-keras bench-ddp validate-policy py-clean dev dev-test lint lint-fix

venv: $(VENV)/.gdiv-deps ## create .venv with the pinned Python build, test, bench and lint dependencies

# Re-run when the pinned list (or this file) changes.
$(VENV)/.gdiv-deps: $(PY_REQS) mk/python.mk
	@command -v $(PYTHON) >/dev/null || { echo "gdiv: $(PYTHON) not found (need Python >= 3.10)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --upgrade pip
	$(VPY) -m pip install -r $(PY_REQS)
	@touch $@

py-tools: $(TOOLS_BIN)/gopy $(TOOLS_BIN)/goimports

# gopy v0.4.10 and goimports from the pinned tools module (see internal/tools/tools.go).
$(TOOLS_BIN)/gopy $(TOOLS_BIN)/goimports: internal/tools/go.mod internal/tools/go.sum
	cd internal/tools && GOBIN=$(TOOLS_BIN) $(GO) install github.com/go-python/gopy golang.org/x/tools/cmd/goimports

py-install: check-go venv py-tools ## build the Go extension and `pip install .` into .venv (what a user runs)
	$(VPY) -m pip install .

# Two processes: TensorFlow and PyTorch's triton both link LLVM, and a process that loads TensorFlow
# first aborts when torch later loads triton ("Option ... registered more than once"); the Keras
# tests (test_*keras*.py) run in a pytest process of their own.
KERAS_TESTS := test_*keras*.py

py-test: py-install ## the Python test suite (zero copy, oracle, errors, threads, fork, leaks; Keras in a second process)
	cd python/tests && $(abspath $(VPY)) -m pytest $(PYTEST_ARGS) --ignore-glob='$(KERAS_TESTS)' .
	cd python/tests && $(abspath $(VPY)) -m pytest $(PYTEST_ARGS) $(KERAS_TESTS)

# The developer loop: the extension is built into python/gdiv once and again
# only when a Go source changes; Python edits are live (PYTHONPATH=python).
$(DEV_STAMP): $(GO_SRC) setup.py | venv py-tools
	$(VPY) setup.py -q build_ext --inplace
	@touch $@

dev: check-go $(DEV_STAMP) ## fast loop: build the extension in place (rebuilt only when Go changes); Python edits need no install

dev-test: dev ## the Python suite on python/ as it is, no install (T=test_controller.py, PYTEST_ARGS="-q -x -k monitor")
ifeq ($(T),.)
	cd python/tests && PYTHONPATH=$(CURDIR)/python $(abspath $(VPY)) -m pytest $(PYTEST_ARGS) --ignore-glob='$(KERAS_TESTS)' .
	cd python/tests && PYTHONPATH=$(CURDIR)/python $(abspath $(VPY)) -m pytest $(PYTEST_ARGS) $(KERAS_TESTS)
else
	cd python/tests && PYTHONPATH=$(CURDIR)/python $(abspath $(VPY)) -m pytest $(PYTEST_ARGS) $(T)
endif

lint: venv ## ruff check + format check, mypy on the package, gofmt, go vet
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .
	$(VPY) -m mypy
	@$(MAKE) --no-print-directory fmt-check vet

lint-fix: venv ## apply ruff's fixes and formatting, gofmt
	$(VPY) -m ruff check --fix .
	$(VPY) -m ruff format .
	gofmt -w gdiv cmd bench internal pybridge

py-bench: py-install ## Python benchmarks: per-call overhead and size sweep vs NumPy and torch
	$(VPY) bench/bench_python.py

bench-step: py-install ## the README's monitored step vs the plain step: MLPs, CNNs, transformers (table + PNG; BENCH_STEP_ARGS=--quick)
	$(VPY) bench/bench_step.py $(BENCH_STEP_ARGS)

bench-keras: py-install ## the Keras step (train_on_batch): plain vs gdiv.keras norms vs vectorized_map per-example grads (table + PNG; BENCH_KERAS_ARGS=--quick)
	$(VPY) bench/bench_keras.py $(BENCH_KERAS_ARGS)

# The peers (opacus, backpack-for-pytorch, tqdm) are bench-only: installed here, not by `venv`.
py-bench-torch: py-install ## per-example norms on the CPU: gdiv.torch vs BackPACK, Opacus, torch.func (table + PNG)
	$(VPY) -m pip install opacus backpack-for-pytorch tqdm
	$(VPY) bench/bench_torch.py $(BENCH_TORCH_ARGS)

py-clean:
	rm -rf _pygen build python/gdiv.egg-info python/gdiv/_gdivgo*.so $(DEV_STAMP)

bench-ddp: py-install ## DDP step on 2 ranks (gloo): plain vs gdiv norms vs two_scale, collectives per step (table + PNG; BENCH_DDP_ARGS=--quick)
	$(VPY) bench/bench_ddp.py $(BENCH_DDP_ARGS)

validate-policy: py-install ## does the adaptive batch hurt? 5 model/data pairs, fixed vs adaptive, simulated P=8 wall clock (table + PNG; VALIDATE_ARGS=--quick)
	$(VPY) bench/validate_policy.py $(VALIDATE_ARGS)
