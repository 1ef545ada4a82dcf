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
gpt2-zeroshot: venv data/evalsets/slope_perplexity/slope_perplexity.yaml
	$(PYTHON) -m accuracy_experiments.gpt2_zeroshot $(if $(SCALE),--scale $(SCALE)) $(if $(SEEDS),--seeds $(SEEDS))

clean:
	rm -rf $(VENV) runs .pytest_cache
