# Two commands set up a fresh machine:  make demo  (the offline main job)  and  make test  (the suite).
# Each creates .venv when missing, installs torch==2.13.0 first (CPU wheel), then everything else
# pinned by constraints.txt, with the core (and its qlora, wandb, mlflow extras) and all plugins in editable mode.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PLUGINS := plugins/xt-alpaca plugins/xt-baichuan plugins/xt-llava plugins/xt-lmdeploy plugins/xt-lmeval plugins/xt-preference
STAMP := $(VENV)/.xt-setup
# DeepSpeed JIT-compiles a CPU comm op on first use; keep the build between runs.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: setup test test-fast demo demo-preference lint clean gpu-check bench-xtuner

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt $(addsuffix /pyproject.toml,$(PLUGINS))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[qlora,wandb,mlflow,dev,bench]" $(addprefix -e ,$(PLUGINS))
	# lmdeploy pins an older torch/peft: install it without its dependencies, plus the pure-python modules
	# that 'import lmdeploy' (support tables, ChatTemplateConfig) needs on CPU; nothing here touches torch/peft.
	$(BIN)/pip install -q -c constraints.txt --no-deps lmdeploy mmengine-lite addict termcolor yapf platformdirs \
		requests urllib3 charset-normalizer idna certifi pybase64
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# The offline demo (docs/demo.md): train a tiny Baichuan2 on alpaca-demo with the plugin's recommended
# settings, print held-out exact-match accuracy, then answer one held-out prompt through `xt chat`.
DEMO_CONFIG := plugins/xt-alpaca/xt_alpaca/configs/demo.yaml

demo: setup
	$(BIN)/xt train $(DEMO_CONFIG) --model baichuan2-tiny --dataset alpaca-demo --output runs/demo --overwrite
	@prompt="$$($(BIN)/python -m xt_alpaca.demo_prompt)" && echo "held-out prompt: $$prompt" && \
	  reply="$$($(BIN)/xt chat runs/demo --prompt "$$prompt")" && echo "reply: $$reply"

# The offline preference demo (docs/plugins/preference.md): DPO on the generated preference-demo pairs,
# held-out reward accuracy printed at the end of each epoch.
demo-preference: setup
	$(BIN)/xt train plugins/xt-preference/xt_preference/configs/demo.yaml --output runs/preference-demo --overwrite

# The GPU check (bench/gpu.py): on an accelerator image with its own CUDA torch and transformers, install
# xt and the plugins without touching those (--no-deps, no build isolation: no network needed), then
# write one JSON of throughput, MFU, memory and packed-logits rows. Without CUDA every row is skipped.
# GPU_WHEELS=DIR first installs the wheels in DIR (no index, no dependencies): a newer transformers where the
# image's is older than a plugin needs (its rows say so). GPU_CHECK_ARGS go to bench/gpu.py
# (e.g. --device cpu --models llama-tiny,baichuan2-7b-tiny,baichuan2-13b-tiny to try the code without a GPU).
GPU_PYTHON ?= python3
GPU_CHECK_OUT ?= gpu-check.json
GPU_WHEELS ?=
GPU_CHECK_ARGS ?=

gpu-check:
	$(if $(GPU_WHEELS),$(GPU_PYTHON) -m pip install -q --no-index --no-deps $(wildcard $(GPU_WHEELS)/*.whl))
	$(GPU_PYTHON) -m pip install -q --no-deps --no-build-isolation -e . $(addprefix -e ,$(PLUGINS))
	$(GPU_PYTHON) bench/gpu.py --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

# bench/data.py's XTuner baseline, bench-only (not part of setup, test or CI): XTuner 0.2.0 pins transformers 4.48
# and mmengine 0.10.6 (python < 3.13), which cannot share .venv with constraints.txt, so it gets its own virtual
# environment. XTuner and mmengine go in without their dependencies, plus only the pure-python pieces (and the
# tokenizer's protobuf/sentencepiece) that process_hf_dataset needs; bench/xtuner-constraints.txt pins them all.
# Then:  .venv/bin/python bench/data.py --xtuner-python .venv-xtuner/bin/python
XTUNER_VENV ?= .venv-xtuner
XTUNER_PIP := $(XTUNER_VENV)/bin/pip install -q -c bench/xtuner-constraints.txt

bench-xtuner: $(XTUNER_VENV)/.xt-bench-xtuner

$(XTUNER_VENV)/.xt-bench-xtuner: bench/xtuner-constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info >= (3, 13))' || \
	  { echo "XTuner 0.2.0 needs python < 3.13; run: make bench-xtuner PYTHON=python3.12 (or older)" >&2; exit 1; }
	test -x $(XTUNER_VENV)/bin/python || $(PYTHON) -m venv $(XTUNER_VENV)
	$(XTUNER_PIP) torch==2.13.0
	$(XTUNER_PIP) transformers==4.48.0
	$(XTUNER_PIP) --no-deps xtuner==0.2.0 mmengine==0.10.6 yapf platformdirs addict rich termcolor \
		datasets fsspec dill multiprocess pandas python-dateutil pyarrow xxhash httpx pillow protobuf sentencepiece
	$(XTUNER_VENV)/bin/python -c 'import tokenizers; print("bench-xtuner: tokenizers", tokenizers.__version__)'
	touch $@

lint: setup
	$(BIN)/ruff check core plugins tests bench

clean:
	rm -rf $(VENV) $(XTUNER_VENV) .cache runs
