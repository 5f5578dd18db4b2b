"""Stage: one CNN feature vector (or, with features.spatial=grid, one per image region) per
image of every split -> Parquet, and a report of the images skipped (unreadable) or converted
(odd format, mode, orientation, size) beside it.

Each finished batch is persisted under `<out stem>.partial/<key>/` (not a DVC output, so
`dvc repro` keeps it after a killed run): a rerun resumes there and gives the same file bit
for bit. The folder is removed once the features are written.

`features.engine: ray` runs the decode + CNN of each batch in a Ray actor pool (see
captioner.engines); this process still writes the shards, the report and the file, which are
byte for byte those of `local` (same batches, same pinned `features.threads`), so the shards
of an interrupted run resume under either engine.
"""

import argparse
import hashlib
import importlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

try:  # first: a Python without the project's packages stops here, in one line; TensorFlow quiet
    from captioner.console import setup_stage_output
except ModuleNotFoundError as e:
    sys.exit(f"{sys.argv[0]}: {sys.executable} has no '{e.name}': activate the project's venv "
             "(`source .venv/bin/activate`) and rerun; `dvc checkout` restores removed outputs")
setup_stage_output()

import captioner.backbones
import captioner.features
import captioner.images
from captioner.backbones import Backbone, load_backbone
from captioner.datasets import load_dataset
from captioner.engines.extraction import feature_runner
from captioner.features import (
    check_bad_images,
    extract,
    extraction_key,
    extraction_report,
    file_stamp,
    partial_dir,
    pin_threads,
    report_path,
    shard_features,
    write_feature_blocks,
)
from captioner.io import exit_on_sigterm, reported_errors, write_json
from captioner.params import check_data_root, load_params

SHOWN_PROBLEMS = 20  # skipped images printed; the report lists them all
LIBRARIES = ("numpy", "PIL", "keras", "tensorflow")  # their versions key the shards too


def code_digest(files: list[Path]) -> str:
    """Hash of the source files that decide the features (a code change must not resume)."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def run_config(backbone: Backbone, weights: str, batch_size: int, threads: int) -> dict[str, Any]:
    """Everything besides the image list that the features depend on: keys the shard folder."""
    backbones = Path(captioner.backbones.__file__).parent
    code = [Path(captioner.images.__file__), Path(captioner.features.__file__), *backbones.glob("*.py")]
    return {
        "backbone": backbone.name, "weights": weights, "weights_file": file_stamp(weights),
        "input_size": backbone.input_size, "feature_dim": backbone.feature_dim, "batch_size": batch_size,
        "grid": backbone.grid, "threads": threads,
        "code": code_digest(code),
        "versions": {m: getattr(importlib.import_module(m), "__version__", "?") for m in LIBRARIES},
    }


def main() -> None:
    exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--report", help="bad-image report (default: <out stem>.report.json)")
    ap.add_argument("--partial", help="shards of unfinished runs (default: <out stem>.partial)")
    args = ap.parse_args()
    report_file = Path(args.report or report_path(args.out))
    partial = Path(args.partial or partial_dir(args.out))
    params = load_params()
    data, feat = params.data, params.features
    max_bad = feat.max_bad_images
    ds = load_dataset(
        check_data_root(params), data.layout, seed=data.seed,
        max_bad_fraction=data.max_bad_fraction,
    )
    images = ds.images.sort_values("image_id").reset_index(drop=True)
    ids = list(images["image_id"])
    paths = [os.path.relpath(p) for p in images["path"]]  # report and shards: project-relative
    pin_threads(feat.threads)  # before TensorFlow starts; the Ray actors pin the same count
    backbone = load_backbone(feat.backbone, feat.weights, feat.spatial)
    shards = partial / extraction_key(paths, run_config(backbone, feat.weights, feat.batch_size, feat.threads))
    shape = f"{backbone.grid[0]} regions x {backbone.grid[1]}-d" if backbone.grid else f"{backbone.feature_dim}-d"
    print(f"extract_features: {len(images)} images with {backbone.name} ({shape}, {feat.dtype}), "
          f"engine {feat.engine}, {feat.threads} TensorFlow thread(s)")
    runner = feature_runner(feat.engine, feat.backbone, feat.weights, feat.spatial, feat.threads, feat.workers,
                            feat.actors, on_error="skip")
    result = extract(  # features stay in the shards: memory does not grow with the images
        paths, backbone, batch_size=feat.batch_size, workers=feat.workers, on_error="skip", shards=shards,
        runner=runner, collect=False,
    )
    if result.resumed:
        print(f"extract_features: resumed an interrupted run: {result.resumed} images read back from {shards}")

    report = {
        "features": str(args.out), "backbone": backbone.name,
        **extraction_report(result, ids, paths, max_bad),
        "missing_on_disk": ds.report.get("ignored", {}).get("split_image_missing_on_disk", 0),
    }
    write_json(report_file, report)
    for path, problem in result.errors[:SHOWN_PROBLEMS]:
        print(f"extract_features: skipped {path}: {problem}", file=sys.stderr)
    if len(result.errors) > SHOWN_PROBLEMS:
        print(f"extract_features: ... {len(result.errors) - SHOWN_PROBLEMS} more in {report_file}", file=sys.stderr)
    if report["converted"]:
        print(f"extract_features: converted and kept: {report['converted']} (examples in {report_file})")
    check_bad_images(len(result.errors), len(paths), max_bad, report_file)

    ok = result.ok_mask
    # A pooled file keeps exactly its old metadata; a grid file says how to unflatten it.
    grid = {"spatial": "grid", "regions": backbone.grid[0], "channels": backbone.grid[1]} if backbone.grid else {}
    batches = -(-len(ids) // feat.batch_size)
    good_ids = [[i for i, good in zip(ids[s : s + feat.batch_size], ok[s : s + feat.batch_size]) if good]
                for s in range(0, len(ids), feat.batch_size)]
    write_feature_blocks(  # shard by shard, a row group at a time
        args.out, zip(good_ids, shard_features(shards, batches, ok, feat.batch_size)), backbone.feature_dim,
        {"backbone": backbone.name, "weights": feat.weights, "feature_dim": backbone.feature_dim, **grid},
        dtype=feat.dtype,
    )
    shutil.rmtree(partial, ignore_errors=True)
    if result.errors:
        print(f"extract_features: {len(result.errors)} unreadable image(s) skipped, listed in {report_file}")


if __name__ == "__main__":
    with reported_errors("extract_features"):
        main()
