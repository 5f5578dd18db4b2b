# Two commands for a newcomer: `make repro` (train + evaluate on the embedded data) and
# `make test`. Everything installs into .venv; nothing is needed beyond PyPI.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PATH := $(abspath $(BIN)):$(PATH)

DATA  ?= ../shared/flickr8k
SPLIT ?= dev
MODEL ?= attention
SET   ?=
PRESET_merge     := presets/flickr8k.yaml
PRESET_attention := presets/flickr8k-attention.yaml
PRESET := $(PRESET_$(MODEL))

.PHONY: install git-ready repro test flickr8k bench compare plots plots-template clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# DVC experiments and dvclive need a git repository with a commit (a fresh clone has one).
git-ready:
	@git rev-parse --verify -q HEAD >/dev/null 2>&1 || { git init -q && git add -A && \
		git -c user.name=captioner -c user.email=captioner@localhost commit -qm "captioner: initial" \
		&& echo "make: created a git repository with an initial commit (DVC needs one)"; }

## Run the whole pipeline on the embedded default data set; print the metrics.
repro: $(STAMP) git-ready
	$(BIN)/dvc repro
	$(BIN)/dvc metrics show

## The test suite (tiny configs) in 2 pytest-xdist workers: most of its time is end-to-end DVC
## runs that wait on process start-up and I/O, so two at once use the 2 cores better.
## End-to-end tests start first (tests/conftest.py); TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

## Real Flickr8k: the MODEL (merge | attention) preset as a tracked experiment on DATA, scored
## on SPLIT and packaged in data/release (target `package`: the generated scenes are not needed).
## The preset is applied on top of the committed params.yaml with every key set, so leftovers
## of earlier `-S` runs never leak in.
## SET="train.precision=float32 train.ensemble=3" adds overrides on top of the preset.
flickr8k: $(STAMP) git-ready
	@test -n "$(PRESET)" || { echo "make: MODEL must be merge or attention, not '$(MODEL)'"; exit 2; }
	@args=$$($(BIN)/python -m captioner.presets $(PRESET) -S data.root=$(DATA) -S evaluate.split=$(SPLIT) \
		$(foreach kv,$(SET),-S '$(kv)')) \
		&& eval "$(BIN)/dvc exp run $$args package"
	$(BIN)/dvc metrics show

## The experiment table people compare, in one screen (<= 160 columns for a 3-experiment grid):
## changed params, nltk BLEU-1..4, coco METEOR and CIDEr-D where present and the best
## validation loss; best BLEU-4 first. EXP_SHOW="-A" etc. adds dvc exp show flags.
COMPARE_DROP := Created|State|Executor|best_epoch|.*/.*|human\..*|diversity\..*|blind_baseline\..*|coco\.bleu.*|coco\.rouge_l|train_.*|val_accuracy
compare:
	@dvc exp show --hide-workspace --only-changed --hide-queued --hide-failed \
		--sort-by metrics/eval.json:bleu4 --sort-order desc --precision 3 \
		--drop '$(COMPARE_DROP)' --keep 'bleu[1-4]$$|coco\.(meteor|cider)$$|best_val_loss' $(EXP_SHOW)

## Plots that open offline: `dvc plots show` uses vendor/dvc-plots.html (.dvc/config), which
## inlines Vega, Vega-Lite and vega-embed. `make plots-template` rebuilds it from npm (pinned).
VEGA_PKGS := vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0
plots:
	dvc plots show -o dvc_plots && echo "open dvc_plots/index.html (works offline)"

plots-template: $(STAMP)
	rm -rf build/npm && mkdir -p build/npm
	cd build/npm && npm pack -q $(VEGA_PKGS) >/dev/null && for f in *.tgz; do \
		mkdir -p "$${f%.tgz}" && tar xzf "$$f" -C "$${f%.tgz}" --strip-components=1; done
	$(BIN)/python -m captioner.plots_template $(foreach p,$(VEGA_PKGS),build/npm/$(subst @,-,$(p))) -o vendor/dvc-plots.html

## Benchmarks (docs/BENCHMARKS.md): the whole suite on DATA -> metrics/bench.json, docs/scaling.png.
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --data $(DATA)

clean:
	rm -rf data/raw data/text data/features data/sequences data/model data/eval
