#!/bin/bash
# Figure: a Flickr8k `train` killed (SIGKILL) in its second member, then resumed by `dvc repro`:
# seconds of the uninterrupted run, of the run until the kill and of the resumed run, and whether
# the resumed model's weights and metrics/train equal the uninterrupted run's (docs/BENCHMARKS.md).
#
#   benchmarks/resume_demo.sh [DATA=../shared/flickr8k] [WORK=/tmp/resume-demo] [EPOCHS=4]
#
# The default (attention) preset cut to 2 members (one attention, one merge) of EPOCHS epochs, in
# a fresh clone of this repository at WORK/repo (its own venv and DVC cache).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DATA=$(realpath "${DATA:-$REPO/../shared/flickr8k}") WORK=${WORK:-/tmp/resume-demo} EPOCHS=${EPOCHS:-4}
rm -rf "$WORK" && mkdir -p "$WORK" && git clone -q "$REPO" "$WORK/repo" && cd "$WORK/repo"
make install >/dev/null && git config user.name demo && git config user.email demo@localhost
.venv/bin/python - "$DATA" "$EPOCHS" <<'PY'
import sys, yaml
from captioner.config.presets import apply_preset, committed_params
p = apply_preset(committed_params(), "presets/flickr8k-attention.yaml",
                 [f"data.root={sys.argv[1]}", "evaluate.split=dev", f"train.epochs={sys.argv[2]}",
                  "train.ensemble=2", "train.merge_members=1"])
yaml.safe_dump(p.model_dump(mode="json"), open("params.yaml", "w"), sort_keys=False)
PY
export PATH=$PWD/.venv/bin:$PATH DVC_NO_ANALYTICS=1
dvc repro build_sequences extract_features > "$WORK/prepare.log" 2>&1
t0=$(date +%s); dvc repro -s train > "$WORK/uninterrupted.log" 2>&1; t1=$(date +%s)
echo "uninterrupted train: $((t1 - t0)) s"
mkdir -p "$WORK/reference" && cp -r data/model_xe metrics/train "$WORK/reference/"
# Pause member 2 as it writes its 2nd epoch's checkpoint (tests/helpers/faults.py), then SIGKILL it.
mkdir -p "$WORK/hooks" && python -c "from tests.helpers.faults import FAULT_HOOK; open('$WORK/hooks/sitecustomize.py', 'w').write(FAULT_HOOK)"
MARK=$WORK/paused.pid
t2=$(date +%s)
PYTHONPATH=$WORK/hooks CAPTIONER_FAULT_RENAME='model_xe\.partial/member-1\.npz$' CAPTIONER_FAULT_NTH=2 \
  CAPTIONER_FAULT_MARK=$MARK dvc repro -f -s train > "$WORK/killed.log" 2>&1 &
DVC=$!
while [ ! -s "$MARK" ]; do sleep 1; done
kill -9 "$(cat "$MARK")"; wait $DVC || true; t3=$(date +%s)
echo "killed after $((t3 - t2)) s (member 2, writing its 2nd epoch's checkpoint)"
t4=$(date +%s); dvc repro -s train > "$WORK/resumed.log" 2>&1; t5=$(date +%s)
echo "resumed train: $((t5 - t4)) s"
grep -h "resumes at" "$WORK/resumed.log" || true
python - "$WORK/reference" <<'PY'
import json, sys, zipfile
from pathlib import Path
ref = Path(sys.argv[1])
for m in sorted((ref / "model_xe").glob("*.keras")):
    same = zipfile.ZipFile(m).read("model.weights.h5") == zipfile.ZipFile(Path("data/model_xe") / m.name).read("model.weights.h5")
    print(f"{m.name}: weights {'identical' if same else 'DIFFER'}")
a, b = (json.loads(p.read_text()) for p in (ref / "train/metrics.json", Path("metrics/train/metrics.json")))
print(f"metrics/train/metrics.json: {'identical' if a == b else 'DIFFER'} {json.dumps(b)}")
PY
