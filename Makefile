# All set-up is here: `make test` and `make smoke` work on a fresh machine with only python3.
# CPU machines get a local virtualenv with the pinned CPU torch; on the GPU machine use the system python that
# already has CUDA torch: `make test-gpu PYTHON=python3`.
VENV   ?= .venv
PYTHON ?= $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat requirements/cpu-dev.txt pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: venv test test-gpu smoke data gpt2-zeroshot clean

venv: $(STAMP)

$(STAMP): requirements/cpu-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -r requirements/cpu-dev.txt
	$(VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*; touch $@

# The CPU test suite (what CI runs). pytest exits 5 when no test ran, which fails the target.
test: venv
	$(PYTHON) -m pytest -m "not gpu" -q

# GPU tests, on a machine with CUDA torch (no venv: the GPU machine's torch is used as is).
test-gpu:
	$(PYTHON) -m pytest -m gpu -q

# Tiny GPT-2, dense vs SLoPe vs Extended SR-STE, a loss table; GPU preset when a GPU is present.
smoke: venv
	$(PYTHON) -m experiments.smoke

# Offline pretraining corpus from Debian packages (apt-get download + dpkg-deb -x; nothing is installed),
# split by document into data/corpus, with a manifest; then the GPT-2 BPE and BERT WordPiece tokenizers and the
# generated zero-shot evaluation sets (lm-eval custom tasks) in data/evalsets and BERT fine-tuning sets in
# data/finetune.
data: venv
	$(PYTHON) -m experiments.data.build --sources all --out data/corpus --work data/work
	$(PYTHON) -m experiments.data.tokenizer --corpus data/corpus
	$(PYTHON) -m experiments.evalsets --corpus data/corpus --out data/evalsets
	$(PYTHON) -m experiments.finetune_sets --corpus data/corpus --out data/finetune

data/evalsets/slope_perplexity/slope_perplexity.yaml:
	$(MAKE) data

# The paper's GPT-2 zero-shot table at the largest scale this machine runs (SCALE=tiny|small|paper, SEEDS=0,1,2):
# pretraining per row and seed (resumable), lm-eval on the generated tasks, results/gpt2_zeroshot_<scale>.{csv,md}.
# NGPU=2: each pretraining run is data parallel over 2 GPUs of this node (torchrun; same global batch and result).
gpt2-zeroshot: venv data/evalsets/slope_perplexity/slope_perplexity.yaml
	$(PYTHON) -m accuracy_experiments.gpt2_zeroshot $(if $(SCALE),--scale $(SCALE)) $(if $(SEEDS),--seeds $(SEEDS)) \
		$(if $(NGPU),--nproc $(NGPU)) $(if $(RESULTS_DIR),--results-dir $(RESULTS_DIR)) \
		$(if $(RUNS_DIR),--runs $(RUNS_DIR)/gpt2_zeroshot)

# Data-parallel pretraining checked against one process (loss and masks), a SIGKILLed run resumed on NGPU and on
# 1 process, weak-scaling throughput (PAIRS interleaved 1-vs-N run pairs, median; 3 on GPUs):
# results/ddp_check_<scale>.{csv,md} (under $(OUT) when set). NGPU=2 default.
.PHONY: ddp-check
ddp-check:
	$(PYTHON) -m experiments.ddp_check --nproc $(or $(NGPU),2) $(if $(SCALE),--scale $(SCALE)) \
		$(if $(METHODS),--methods $(METHODS)) $(if $(PAIRS),--throughput-pairs $(PAIRS))

# results/CLAIMS.md: each accuracy claim of the paper with our numbers and a verdict (holds / does not hold /
# inconclusive), from the results CSVs at the largest scale present per experiment; missing ones read "not run".
# SCALE=tiny|small|paper judges that scale only, into results/CLAIMS_<scale>.md.
.PHONY: claims reproduce
claims: venv
	$(PYTHON) -m experiments.claims $(if $(RESULTS_DIR),--results $(RESULTS_DIR)) \
		$(if $(SCALE),--scale $(SCALE) --out $(or $(RESULTS_DIR),results)/CLAIMS_$(SCALE).md)

# The main job: data -> gpt2-zeroshot -> bert-glue -> bert-squad -> bert-mixed -> claims at the largest scale this
# machine runs (tiny on CPU, small with CUDA; SCALE=, SEEDS= override), recomputed into runs/reproduce/<scale>/
# (RESULTS_DIR=results adds to the committed tables instead). Resumable: rerun after an interruption.
reproduce: venv
	$(PYTHON) -m experiments.reproduce $(if $(SCALE),--scale $(SCALE)) $(if $(SEEDS),--seeds $(SEEDS)) \
		$(if $(RESULTS_DIR),--results-dir $(RESULTS_DIR))

# The paper's BERT tables at the largest scale this machine runs (SCALE=tiny|small|paper, SEEDS=0,1,2): MLM
# pretraining per row and seed (resumable, cached in runs/bert and shared between tables), fine-tuning on the
# generated tasks with sparsity kept, results/bert_{glue,squad,mixed}_<scale>.{csv,md}.
.PHONY: bert-glue bert-squad bert-mixed

data/finetune/span/validation.jsonl:
	$(MAKE) data

bert-glue: venv data/finetune/span/validation.jsonl
	$(PYTHON) -m accuracy_experiments.bert_glue $(if $(SCALE),--scale $(SCALE)) $(if $(SEEDS),--seeds $(SEEDS)) \
		$(if $(RESULTS_DIR),--results-dir $(RESULTS_DIR)) $(if $(RUNS_DIR),--runs $(RUNS_DIR)/bert)

bert-squad: venv data/finetune/span/validation.jsonl
	$(PYTHON) -m accuracy_experiments.bert_squad $(if $(SCALE),--scale $(SCALE)) $(if $(SEEDS),--seeds $(SEEDS)) \
		$(if $(RESULTS_DIR),--results-dir $(RESULTS_DIR)) $(if $(RUNS_DIR),--runs $(RUNS_DIR)/bert)

bert-mixed: venv data/finetune/span/validation.jsonl
	$(PYTHON) -m accuracy_experiments.bert_mixed $(if $(SCALE),--scale $(SCALE)) $(if $(SEEDS),--seeds $(SEEDS)) \
		$(if $(RESULTS_DIR),--results-dir $(RESULTS_DIR)) $(if $(RUNS_DIR),--runs $(RUNS_DIR)/bert)

# The BERT tables (TABLES=bert_glue,bert_squad,bert_mixed) by PROCS worker processes side by side on one run cache:
# on a GPU the small model is launch-bound, so e.g. `make bert-tables TABLES=bert_squad,bert_mixed SEEDS=2 PROCS=12
# PYTHON=python3` (another PYTHON than the venv's: no venv is built, as on the GPU machine).
.PHONY: bert-tables
bert-tables: $(if $(filter $(VENV)/bin/python,$(PYTHON)),venv) data/finetune/span/validation.jsonl
	$(PYTHON) -m accuracy_experiments.bert_parallel $(if $(TABLES),--tables $(TABLES)) $(if $(SCALE),--scale $(SCALE)) \
		$(if $(SEEDS),--seeds $(SEEDS)) $(if $(PROCS),--procs $(PROCS)) $(if $(RESULTS_DIR),--results-dir $(RESULTS_DIR)) \
		$(if $(RUNS_DIR),--runs $(RUNS_DIR)/bert)

# ----- performance experiments (performance_experiments/README.md) ------------------------------------------------
# GPU targets use the GPU machine's python (PYTHON=python3: no venv there) and write CSVs under $(OUT) when set
# (the device machine sets OUT), else results/.
RESULTS_OUT = $(or $(OUT),results)
.PHONY: speedup ablations seed-notes figures bench-cpu bench-gpu

# End-to-end speed and memory, dense vs SLoPe vs FST (simulated): MODEL=opt-13b DTYPE=bfloat16 SEQ=2048
# ATTENTION=sdpa|eager; SPEEDUP_ARGS= passes more flags (e.g. --time-budget-s 420). One model and dtype fits
# ~8 minutes on an H100; without MODEL the whole sweep runs (7 models x 2 dtypes: hours).
# NGPU=2: the training step data parallel over 2 GPUs of this node (torchrun; dense, SLoPe, FST; one GPU vs N in
# the same processes) -> speedup_ddp_<gpu>.csv; the inference and memory sections are single-GPU only.
SPEEDUP_FLAGS = $(if $(MODEL),--models $(MODEL)) $(if $(DTYPE),--dtypes $(DTYPE)) $(if $(SEQ),--seq $(SEQ)) \
	$(if $(ATTENTION),--attention $(ATTENTION)) --output-dir $(RESULTS_OUT) $(SPEEDUP_ARGS)
speedup:
ifneq ($(filter-out 1,$(or $(NGPU),1)),)
	$(PYTHON) -m torch.distributed.run --standalone --nproc_per_node=$(NGPU) -m performance_experiments.speedup_ddp \
		$(SPEEDUP_FLAGS)
else
	$(PYTHON) -m performance_experiments.speedup $(SPEEDUP_FLAGS)
endif

# Model-level ablations on the GPU (tiling, extension vs torch op, CUTLASS, CUDA graphs, Triton addmm, dense
# fallback, attention): ABLATIONS=tiling,implementation MODEL=opt-13b DTYPE=bfloat16.
ablations:
	$(PYTHON) -m performance_experiments.ablations $(if $(ABLATIONS),--ablations $(ABLATIONS)) \
		$(if $(MODEL),--model $(MODEL)) $(if $(DTYPE),--dtype $(DTYPE)) --output-dir $(RESULTS_OUT) $(ABLATION_ARGS)

# The seed README's performance notes that no other benchmark measures (torch's 2:4 out=, in-place vs assigned
# tiles, tiles on CUDA streams, HF Trainer fully in fp16) -> seed_notes_<gpu>.csv; SEED_NOTES_ARGS= passes flags.
seed-notes:
	$(PYTHON) -m performance_experiments.seed_notes --output-dir $(RESULTS_OUT) $(SEED_NOTES_ARGS)

# results/figures/*.png from the result CSVs present (missing ones are skipped).
figures: venv
	$(PYTHON) -m performance_experiments.figures

# The CPU regression benchmarks alone (make test runs them too).
bench-cpu: venv
	$(PYTHON) -m pytest tests/bench -q -m bench

# bench_linear's quick preset on the GPU, twice, compared with the committed H100 results: fails when the median
# of a speedup ratio (at >= 1024 tokens) fell by more than 10% below the committed runs' median.
bench-gpu:
	mkdir -p $(or $(OUT),runs)
	rm -f $(or $(OUT),runs)/bench_linear_quick.csv
	for run in 1 2; do $(PYTHON) -m performance_experiments.bench_linear --preset quick --repeats 30 \
		--output $(or $(OUT),runs)/bench_linear_quick.csv || exit 1; done
	$(PYTHON) -m performance_experiments.compare_bench --baseline results/bench_linear_h100.csv \
		--fresh $(or $(OUT),runs)/bench_linear_quick.csv --report $(or $(OUT),runs)/bench_gpu_compare.md

clean:
	rm -rf $(VENV) runs .pytest_cache
