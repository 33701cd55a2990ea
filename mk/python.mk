# Python package targets; the top-level Makefile includes this file.
#
#   make venv        create .venv and install the build/test/bench dependencies
#   make py-install  build gopy into .tools/bin and `pip install .` into .venv
#   make py-test     py-install, then pytest python/tests
#   make py-bench    py-install, then bench/bench_python.py (table + PNG)
#
# Needs only Go >= 1.25, Python >= 3.10 (with venv), gcc and make.

GO        ?= go
PYTHON    ?= python3
VENV      ?= .venv
VPY       := $(VENV)/bin/python
TOOLS_BIN := $(CURDIR)/.tools/bin
PY_DEPS   := setuptools wheel pybindgen numpy pyarrow pytest torch matplotlib
PYTEST_ARGS ?= -q

.PHONY: venv py-tools py-install py-test py-bench py-bench-torch py-clean

venv: $(VENV)/.gdiv-deps ## create .venv with the Python build, test and bench dependencies

# Re-run when this file (the dependency list) changes.
$(VENV)/.gdiv-deps: mk/python.mk
	@command -v $(PYTHON) >/dev/null || { echo "gdiv: $(PYTHON) not found (need Python >= 3.10)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --upgrade pip
	$(VPY) -m pip install $(PY_DEPS)
	@touch $@

py-tools: $(TOOLS_BIN)/gopy $(TOOLS_BIN)/goimports

# gopy v0.4.10 and goimports from the pinned tools module (see internal/tools/tools.go).
$(TOOLS_BIN)/gopy $(TOOLS_BIN)/goimports: internal/tools/go.mod internal/tools/go.sum
	cd internal/tools && GOBIN=$(TOOLS_BIN) $(GO) install github.com/go-python/gopy golang.org/x/tools/cmd/goimports

py-install: check-go venv py-tools ## build the Go extension and `pip install .` into .venv (what a user runs)
	$(VPY) -m pip install .

py-test: py-install ## the Python test suite (zero copy, oracle, errors, threads, fork, leaks)
	cd python/tests && ../../$(VPY) -m pytest $(PYTEST_ARGS) .

py-bench: py-install ## Python benchmarks: per-call overhead and size sweep vs NumPy and torch
	$(VPY) bench/bench_python.py

# The peers (opacus, backpack-for-pytorch, tqdm) are bench-only: installed here, not by `venv`.
py-bench-torch: py-install ## per-example norms on the CPU: gdiv.torch vs BackPACK, Opacus, torch.func (table + PNG)
	$(VPY) -m pip install opacus backpack-for-pytorch tqdm
	$(VPY) bench/bench_torch.py $(BENCH_TORCH_ARGS)

py-clean:
	rm -rf _pygen build python/gdiv.egg-info python/gdiv/_gdivgo*.so
