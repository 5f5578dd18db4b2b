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

.PHONY: install git-ready repro test flickr8k bench clean

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

## The test suite (tiny configs; well under 10 minutes on 2 cores).
test: $(STAMP)
	$(BIN)/python -m pytest -q

## Real Flickr8k: the MODEL (merge | attention) preset as a tracked experiment on DATA, scored
## on SPLIT (target `evaluate`: the generated scenes are not needed). The preset is applied on top
## of the committed params.yaml with every key set, so leftovers of earlier `-S` runs never leak in.
## SET="train.precision=float32 train.ensemble=3" adds overrides on top of the preset.
flickr8k: $(STAMP) git-ready
	@test -n "$(PRESET)" || { echo "make: MODEL must be merge or attention, not '$(MODEL)'"; exit 2; }
	@args=$$($(BIN)/python -m captioner.presets $(PRESET) -S data.root=$(DATA) -S evaluate.split=$(SPLIT) \
		$(foreach kv,$(SET),-S '$(kv)')) \
		&& eval "$(BIN)/dvc exp run $$args evaluate"
	$(BIN)/dvc metrics show

## Benchmarks (docs/BENCHMARKS.md): the whole suite on DATA -> metrics/bench.json, docs/scaling.png.
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --data $(DATA)

clean:
	rm -rf data/raw data/text data/features data/sequences data/model data/eval
