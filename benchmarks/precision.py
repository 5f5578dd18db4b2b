"""Training speed by precision: seconds per epoch of each member kind in float32 and in mixed
bfloat16 (or mixed float16), on a project's own features and captions, as the train stage fits them.

For every kind (attention, merge) and precision it builds member 0 as `captioner.training.ensemble`
does (seed `train.seed`, the project's `model` and `train` params), fits `--epochs` epochs of at
most `--batches` batches each, and times the training batches of the last epoch (the first
epoch also traces the graphs). The full epoch's time is that rate times the epoch's batch count.
It says nothing about quality: a full run per precision does (docs/EXPERIMENTS.md).

    python benchmarks/precision.py --project ../flickr8k --batches 120

A merge member in an attention project reads the grid averaged over its regions, as the preset's
merge members do. `train.precision: auto` resolves to what this prints as `auto` here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` as a package from anywhere

from benchmarks import common  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", default=".", help="a project folder after `dvc repro` (default: .)")
    ap.add_argument("--kinds", nargs="+", default=None, choices=["attention", "merge"],
                    help="member kinds (default: the project's model.kind, and merge too for attention)")
    ap.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"],
                    choices=["float32", "mixed_bfloat16", "mixed_float16"])
    ap.add_argument("--batches", type=int, default=120, help="training batches per epoch (default %(default)s)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs; the last one is timed (default %(default)s)")
    ap.add_argument("--json", help="also write the rows (and the machine) here")
    args = ap.parse_args(argv)
    if args.epochs < 2:
        ap.error("--epochs must be at least 2: the first epoch traces the graphs")

    from captioner.config.params import load_params
    from captioner.datasets.text import load_vocabulary
    from captioner.features.store import FeatureFile
    from captioner.runtime.threads import pin_threads
    from captioner.training.batches import batch_count, caption_lengths
    from captioner.training.ensemble import check_spatial, member_jobs, training_data
    from captioner.training.fit import train_member
    from captioner.training.precision import describe_devices, resolve_precision

    project = Path(args.project)
    params = load_params(project / "params.yaml")
    mp, tp = params.model, params.train
    features = FeatureFile.open(project / "data" / "features" / f"{params.features.backbone}.parquet")
    check_spatial(features, mp.kind)
    vocab = load_vocabulary(project / "data" / "text" / "vocab.json")
    data, _ = training_data(features, project / "data" / "sequences")
    kinds = args.kinds or ([mp.kind, "merge"] if mp.kind == "attention" else [mp.kind])
    if "attention" in kinds and features.grid is None:
        ap.error(f"{features.path}: attention members need grid features (features.spatial: grid)")
    full = batch_count(caption_lengths(data.train_ids), tp.batch_size, tp.bucket_width)
    pin_threads(tp.threads)
    print(f"precision: {describe_devices()}; auto -> {resolve_precision('auto')}")
    print(f"precision: {features.describe()}, {full} batches of {tp.batch_size} per full epoch; timing "
          f"epoch {args.epochs} of {args.epochs} x {min(args.batches, full)} batches, {tp.threads} thread(s)")

    rows = []
    for kind in kinds:
        model = mp.model_copy(update={"kind": "attention"}) if kind == "attention" else mp
        one = tp.model_copy(update={"ensemble": 1, "merge_members": int(kind == "merge" and mp.kind == "attention")})
        (job,) = member_jobs(model, one, len(vocab), features, "float32")
        for precision in args.precisions:
            timer = common.epoch_timer()
            run = dataclasses.replace(job, precision=precision, epochs=args.epochs, max_batches=args.batches,
                                      patience=args.epochs, checkpoints="")
            _, result = train_member(run, data, callbacks=[timer], verbose=0)
            batches = min(args.batches, full)
            per_batch = timer.seconds[-1] / batches
            row = {"kind": kind, "precision": precision, "batches_timed": batches,
                   "s_per_batch": round(per_batch, 4), "epoch_s": round(per_batch * full, 1),
                   "train_loss": round(result.history["loss"][-1], 4)}
            rows.append(row)
            print(f"  {kind:9s} {precision:15s} {1000 * per_batch:7.1f} ms/batch  ~{row['epoch_s']:6.1f} s/epoch "
                  f"(training only)  loss after {args.epochs} short epochs {row['train_loss']:.3f}", flush=True)
    for kind in kinds:
        base = next((r for r in rows if r["kind"] == kind and r["precision"] == "float32"), None)
        for r in rows:
            if base and r["kind"] == kind and r is not base:
                r["speedup_vs_float32"] = round(base["s_per_batch"] / r["s_per_batch"], 2)
                print(f"  {kind}: {r['precision']} is {r['speedup_vs_float32']:.2f}x float32's speed")
    if args.json:
        from captioner.runtime.io import write_json

        write_json(args.json, {"machine": common.machine(), "project": os.path.abspath(args.project),
                               "auto": resolve_precision("auto"), "rows": rows})
        print(f"-> {args.json}")
    return rows


if __name__ == "__main__":
    main()
