# gdiv — every set-up step a user or CI needs goes through these targets.
# Go modules are fetched by the go command on first use (module proxy).

GO       ?= go
FUZZTIME ?= 3s
BENCHTIME ?= 0.5s
BIN      := bin/gdiv
PKGS     := ./...
# the Go core and its layers: formulas (gdiv), data I/O (gdiv/data), trainer (gdiv/train)
CORE     := ./gdiv ./gdiv/data ./gdiv/train
# packages whose code runs the kernels (gdiv's, and the trainer's sums through them)
KERNEL_PKGS := ./gdiv ./gdiv/train

.DEFAULT_GOAL := help
.PHONY: help demo demo-keras demo-go build test unit purego fuzz-short fuzz bench check-go fmt-check vet clean

include mk/python.mk

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-11s %s\n", $$1, $$2}'

check-go: ## fail clearly unless Go >= 1.25 is installed
	@command -v $(GO) >/dev/null || { echo "gdiv: Go is not installed (need Go >= 1.25: https://go.dev/dl)"; exit 1; }
	@$(GO) run ./internal/gocheck

build: check-go ## build the CLI into bin/gdiv
	$(GO) build -o $(BIN) ./cmd/gdiv

demo: py-install ## the main job: an MLP on digits in PyTorch, fixed vs gdiv-adaptive batch (table + PNG)
	$(VPY) examples/torch_digits.py --out examples/out

demo-keras: py-install ## the same main job in Keras 3 (TensorFlow): model.fit with gdiv.keras (table + PNG)
	$(VPY) examples/keras_digits.py --out examples/out

demo-go: build ## the same question with the Go reference trainer and the CLI (table + PNGs in out/demo)
	@sh ./examples/demo.sh $(BIN)

test: check-go lint unit purego fuzz-short py-test ## run every test (what CI runs): lint, Go, fuzz, Python
	@sh ./examples/demo.sh $(BIN) >/dev/null 2>&1 && echo "demo-go: ok"

fmt-check:
	@out=$$(gofmt -l gdiv cmd bench internal pybridge); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

unit: build
	$(GO) test -count=1 $(PKGS)

purego: ## the pure-Go kernels (no assembly), as on non-amd64 machines
	$(GO) test -count=1 -tags purego $(KERNEL_PKGS)

fuzz-short: ## every fuzz target of every core package for FUZZTIME each (default 3s)
	@for p in $(CORE); do \
		for t in $$($(GO) test -list '^Fuzz' $$p | grep '^Fuzz'); do \
			echo "fuzz $$p $$t ($(FUZZTIME))"; \
			$(GO) test $$p -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) >/tmp/gdiv-fuzz.log 2>&1 || { cat /tmp/gdiv-fuzz.log; exit 1; }; \
		done; \
	done

fuzz: ## longer fuzzing: make fuzz FUZZTIME=5m
	@$(MAKE) --no-print-directory fuzz-short FUZZTIME=$(FUZZTIME)

bench: check-go ## benchmarks, printed as side-by-side tables
	$(GO) test $(CORE) -run '^$$' -bench . -benchtime $(BENCHTIME) | $(GO) run ./bench/benchtable

clean: py-clean ## remove build outputs
	rm -rf bin
