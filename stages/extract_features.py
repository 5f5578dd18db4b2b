"""Stage: one CNN feature vector (or, with features.spatial=grid, one per image region) per
image of every split -> Parquet (captioner.features.store), and a report of the images skipped
(unreadable) or converted (odd format, mode, orientation, size) beside it.

Each finished batch is persisted under `<out stem>.partial/<key>/` (not a DVC output, so
`dvc repro` keeps it after a killed run): a rerun resumes there and gives the same file bit
for bit. The folder is removed once the features are written.

`features.engine: ray` runs the decode + CNN of each batch in a Ray actor pool; this process
still writes the shards, the report and the file, which are byte for byte those of `local`
(same batches, same pinned `features.threads`), so an interrupted run resumes under either engine.
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

from _stage import run_stage

from captioner.config.params import check_data_root, load_params
from captioner.datasets.readers import load_dataset
from captioner.engines.extraction import feature_runner
from captioner.features.backbones import load_backbone
from captioner.features.extract import check_bad_images, extract, extraction_report, write_feature_file
from captioner.features.shards import partial_dir, shard_key
from captioner.features.store import report_path
from captioner.runtime.io import write_json
from captioner.runtime.threads import pin_threads

SHOWN_PROBLEMS = 20  # skipped images printed; the report lists them all


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--report", help="bad-image report (default: <out stem>.report.json)")
    ap.add_argument("--partial", help="shards of unfinished runs (default: <out stem>.partial)")
    args = ap.parse_args()
    report_file, partial = Path(args.report or report_path(args.out)), Path(args.partial or partial_dir(args.out))
    params = load_params()
    data, feat = params.data, params.features
    ds = load_dataset(check_data_root(params), data.layout, seed=data.seed, max_bad_fraction=data.max_bad_fraction)
    images = ds.images.sort_values("image_id").reset_index(drop=True)
    ids, paths = list(images["image_id"]), [os.path.relpath(p) for p in images["path"]]  # project-relative
    pin_threads(feat.threads)  # before TensorFlow starts; the Ray actors pin the same count
    backbone = load_backbone(feat.backbone, feat.weights, feat.spatial)
    shards = partial / shard_key(paths, backbone, feat.weights, feat.batch_size, feat.threads)
    shape = f"{backbone.grid[0]} regions x {backbone.grid[1]}-d" if backbone.grid else f"{backbone.feature_dim}-d"
    print(f"extract_features: {len(images)} images with {backbone.name} ({shape}, {feat.dtype}), "
          f"engine {feat.engine}, {feat.threads} TensorFlow thread(s)")
    runner = feature_runner(feat.engine, feat.backbone, feat.weights, feat.spatial, feat.threads, feat.workers,
                            feat.actors, on_error="skip")
    result = extract(paths, backbone, batch_size=feat.batch_size, workers=feat.workers, on_error="skip",
                     shards=shards, runner=runner, collect=False)  # features stay in the shards
    if result.resumed:
        print(f"extract_features: resumed an interrupted run: {result.resumed} images read back from {shards}")
    report = {"features": str(args.out), "backbone": backbone.name,
              **extraction_report(result, ids, paths, feat.max_bad_images),
              "missing_on_disk": ds.report.get("ignored", {}).get("split_image_missing_on_disk", 0)}
    write_json(report_file, report)
    for path, problem in result.errors[:SHOWN_PROBLEMS]:
        print(f"extract_features: skipped {path}: {problem}", file=sys.stderr)
    if len(result.errors) > SHOWN_PROBLEMS:
        print(f"extract_features: ... {len(result.errors) - SHOWN_PROBLEMS} more in {report_file}", file=sys.stderr)
    if report["converted"]:
        print(f"extract_features: converted and kept: {report['converted']} (examples in {report_file})")
    check_bad_images(len(result.errors), len(paths), feat.max_bad_images, report_file)
    write_feature_file(args.out, result, ids, shards, feat.batch_size, backbone, feat.weights, feat.dtype)
    shutil.rmtree(partial, ignore_errors=True)
    if result.errors:
        print(f"extract_features: {len(result.errors)} unreadable image(s) skipped, listed in {report_file}")


if __name__ == "__main__":
    run_stage("extract_features", main)
