# Two commands for a newcomer: `make repro` (train + evaluate on the embedded data) and
# `make test`. Everything installs into .venv; nothing is needed beyond PyPI.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

## TensorFlow flavour, chosen at install time: cpu (default; tensorflow-cpu, or tensorflow where
## PyPI has no tensorflow-cpu wheel) or gpu (tensorflow[and-cuda], Linux). `make install TF=gpu`
## switches an existing .venv (the lock sync removes the other flavour); later make commands
## keep the flavour installed (the stamp records it).
TF_INSTALLED := $(strip $(shell cat $(STAMP) 2>/dev/null))
TF    ?= $(or $(TF_INSTALLED),cpu)
## Two pinned sets per flavour: requirements/$(TF).lock for the pipeline, the CLI and the service
## (`make install`, `make repro`: no test tools) and requirements/$(TF)-test.lock, which adds the
## Ray engine and the test tools (`make test`, `make test-all`).
LOCK  := requirements/$(TF).lock
TEST_LOCK := requirements/$(TF)-test.lock
## uv installs the pinned sets (requirements/*.lock, from `make lock`); its own version is pinned here.
UV_VERSION := 0.13.9
UV     := $(BIN)/uv
UV_STAMP := $(VENV)/.uv-$(UV_VERSION)
LOCK_ARGS ?=
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PATH := $(abspath $(BIN)):$(PATH)

DATA  ?= ../shared/flickr8k
SPLIT ?= dev
MODEL ?= attention
SET   ?=
PRESET_merge     := presets/flickr8k.yaml
PRESET_attention := presets/flickr8k-attention.yaml
PRESET := $(PRESET_$(MODEL))

.PHONY: install install-test lock git-ready repro test test-all results results-check flickr8k bench compare plots plots-template clean FORCE

$(UV_STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	rm -f $(VENV)/.uv-* && touch $@

## The venv holds exactly a lock's packages (uv pip sync removes others), then the project.
## The test set includes the pipeline's, so after `make test` a `make repro` installs nothing.
$(STAMP): $(LOCK) pyproject.toml $(UV_STAMP) $(if $(filter $(TF),$(or $(TF_INSTALLED),cpu)),,FORCE)
	$(UV) pip sync -q --python $(BIN)/python $(LOCK)
	$(UV) pip install -q --python $(BIN)/python --no-deps -e .
	rm -f $(TEST_STAMP) && echo $(TF) > $(STAMP)

$(TEST_STAMP): $(TEST_LOCK) $(STAMP)
	$(UV) pip sync -q --python $(BIN)/python $(TEST_LOCK)
	$(UV) pip install -q --python $(BIN)/python --no-deps -e .
	touch $(TEST_STAMP)

requirements/%.lock:
	@echo "make: no $@: TF must be cpu or gpu, not '$(TF)'" >&2; exit 2

FORCE:

install: $(STAMP)

install-test: $(TEST_STAMP)

## Rewrite the four lock files from pyproject.toml (for all platforms, Python >= 3.11), keeping
## the pinned versions that still fit; LOCK_ARGS=--upgrade takes the newest. Needs PyPI. The
## pipeline's set is compiled with the test set's pins as constraints, so both pin the same versions.
COMPILE = $(UV) pip compile -q --universal --python-version 3.11 pyproject.toml --custom-compile-command "make lock"
lock: $(UV_STAMP)
	for tf in cpu gpu; do \
		$(COMPILE) --extra $$tf --extra serve --extra ray --extra test $(LOCK_ARGS) -o requirements/$$tf-test.lock && \
		$(COMPILE) --extra $$tf --extra serve -c requirements/$$tf-test.lock -o requirements/$$tf.lock || exit 1; \
	done

# DVC experiments and dvclive need a git repository with a commit (a fresh clone has one).
git-ready:
	@git rev-parse --verify -q HEAD >/dev/null 2>&1 || { git init -q && git add -A && \
		git -c user.name=captioner -c user.email=captioner@localhost commit -qm "captioner: initial" \
		&& echo "make: created a git repository with an initial commit (DVC needs one)"; }

## Run the whole pipeline on the embedded default data set; end with a summary that fits 100
## columns (headline scores, where the gallery and model are, what to run next).
repro: $(STAMP) git-ready
	$(BIN)/dvc repro
	@$(BIN)/python -m captioner.app.summary

## Tests in tiers (tests/conftest.py): `make test` is the everyday run, the unit tier (one
## folder per sub-package) and the system smoke (a fresh tiny DAG runs every stage; a train
## change reruns train and below, not the CNN); `make test-all` runs every tier (DVC, make, Ray,
## uvicorn, Chromium, the package index), as CI does. Two pytest-xdist workers by default
## (TEST_WORKERS=0: one process); each test has a time limit.
TEST_WORKERS ?= 2
PYTEST = $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15
test: $(TEST_STAMP)
	$(PYTEST) -m "unit or smoke" tests

test-all: $(TEST_STAMP)
	$(PYTEST) tests

## Real Flickr8k: the MODEL (merge | attention) preset as a tracked experiment on DATA, scored
## on SPLIT and packaged in data/release (target `package`: the generated scenes are not needed).
## The preset is applied on top of the committed params.yaml with every key set, so leftovers
## of earlier `-S` runs never leak in.
## SET="train.ensemble=3 scst.epochs=5" adds overrides on top of the preset.
flickr8k: $(STAMP) git-ready
	@test -n "$(PRESET)" || { echo "make: MODEL must be merge or attention, not '$(MODEL)'"; exit 2; }
	@args=$$($(BIN)/python -m captioner.config.presets $(PRESET) -S data.root=$(DATA) -S evaluate.split=$(SPLIT) \
		$(foreach kv,$(SET),-S '$(kv)')) \
		&& eval "$(BIN)/dvc exp run $$args package"
	@$(BIN)/python -m captioner.app.summary

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
	$(BIN)/python -m captioner.app.plots_template $(foreach p,$(VEGA_PKGS),build/npm/$(subst @,-,$(p))) -o vendor/dvc-plots.html

## The result tables of README.md and docs/ rendered from their records (results/*.json);
## results-check fails when a document's figure disagrees with its record.
results: $(STAMP)
	$(BIN)/python -m captioner.app.results

results-check: $(STAMP)
	$(BIN)/python -m captioner.app.results --check

## Benchmarks (docs/BENCHMARKS.md): the whole suite on DATA -> metrics/bench.json, docs/scaling.png.
bench: $(TEST_STAMP)
	$(BIN)/python benchmarks/run_all.py --data $(DATA)

clean:
	rm -rf data/raw data/text data/features data/sequences data/model_xe data/model data/eval
