"""Stage: self-critical sequence training (SCST, captioner.scst) of train's cross-entropy model
toward CIDEr-D, into data/model, the pipeline's trained model.

Each member in turn: `scst.epochs` passes over the train images, `scst.samples` captions sampled
per image and rewarded by their CIDEr-D against its train references, minus a baseline (the other
samples' mean, or the greedy caption's); after each epoch the greedy captions of dev are scored by
CIDEr-D and the best epoch (0: the cross-entropy model) is kept. Curves of both per member go to
`--live`/curves. `scst.epochs: 0` copies the model unchanged, without loading TensorFlow: a change
of `scst` params reruns this stage and evaluate, never train. SCST samples from every train image
each step, so the features are read whole here (not streamed, unlike train and evaluate)."""

import argparse
import shutil
import sys
import time
from pathlib import Path

try:  # first: a Python without the project's packages stops here, in one line; TensorFlow quiet
    from captioner.console import setup_stage_output
except ModuleNotFoundError as e:
    sys.exit(f"{sys.argv[0]}: {sys.executable} has no '{e.name}': activate the project's venv "
             "(`source .venv/bin/activate`) and rerun; `dvc checkout` restores removed outputs")
setup_stage_output()

from captioner.io import atomic_path, exit_on_sigterm, read_json, reported_errors, write_json
from captioner.params import load_params


def write_curves(folder: Path, histories: list[dict]) -> None:
    """reward.tsv (mean sampled train reward) and dev_cider.tsv (greedy dev CIDEr-D, from epoch 0)
    by epoch, one column per member; header-only files when SCST is off."""
    folder.mkdir(parents=True, exist_ok=True)
    members = [f"member_{h['member']}" for h in histories]
    for name, key, first in (("reward", "reward", 1), ("dev_cider", "dev_cider", 0)):
        epochs = histories[0]["epochs"][first:] if histories else []
        rows = ["\t".join(["epoch", *members])] + [
            "\t".join([str(e["epoch"]), *(f"{h['epochs'][e['epoch']][key]:.6g}" for h in histories)]) for e in epochs
        ]
        (folder / f"{name}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def main() -> None:
    exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model-in", default="data/model_xe", help="train's cross-entropy model folder")
    ap.add_argument("--features", required=True)
    ap.add_argument("--text", default="data/text")
    ap.add_argument("--out", default="data/model")
    ap.add_argument("--live", default="metrics/scst", help="curves/, metrics.json, run.json")
    args = ap.parse_args()
    params = load_params()
    sp, src = params.scst, Path(args.model_in)

    with atomic_path(args.live) as live, atomic_path(args.out) as out:
        live.mkdir()
        if not sp.epochs:
            shutil.copytree(src, out)
            write_curves(live / "curves", [])
            write_json(live / "metrics.json", {"epochs": 0})
            write_json(live / "run.json", {"epochs": 0})
            print(f"scst: off (scst.epochs 0): {src} copied to {args.out}")
            return

        import pandas as pd

        from captioner.features import read_features
        from captioner.model import load_members
        from captioner.scst import ScstConfig, finetune, references_by_row
        from captioner.text import load_vocabulary

        meta = read_json(src / "meta.json")
        vocab = load_vocabulary(src / "vocab.json")
        models = load_members(src, meta, int(meta["feature_dim"]), len(vocab))
        feat_ids, features, _ = read_features(args.features)
        refs = {}
        for split in ("train", "dev"):
            table = pd.read_parquet(Path(args.text) / f"{split}.parquet", columns=["image_id", "caption_no", "caption"])
            table = table.sort_values(["image_id", "caption_no"])
            refs[split] = references_by_row(table["image_id"].astype(str).tolist(), table["caption"].tolist(), feat_ids)
        config = ScstConfig(sp.samples, sp.max_length, sp.baseline, sp.learning_rate, sp.batch_size, params.train.seed)
        print(f"scst: {sp.epochs} epoch(s) x {len(models)} model(s), {sp.samples} samples per image, baseline "
              f"{sp.baseline}, {len(refs['train'][0])} train / {len(refs['dev'][0])} dev images")
        start = time.perf_counter()
        histories = finetune(models, features, refs["train"], refs["dev"], vocab, config, sp.epochs,
                             progress=sys.stdout.isatty())
        seconds = time.perf_counter() - start

        shutil.copytree(src, out, ignore=shutil.ignore_patterns("*.keras"))
        for name, model in zip(meta["members"], models):
            model.save(out / name)
        write_json(out / "meta.json", {**meta, "scst": {"epochs": sp.epochs, "best_epochs": [h["best_epoch"] for h in histories]}})
        write_curves(live / "curves", histories)
        xe = [h["epochs"][0]["dev_cider"] for h in histories]
        best = [h["best_dev_cider"] for h in histories]
        write_json(live / "metrics.json", {  # greedy dev CIDEr-D, mean over members
            "epochs": sp.epochs, "dev_cider_xe": round(sum(xe) / len(xe), 5), "dev_cider": round(sum(best) / len(best), 5),
        })
        write_json(live / "run.json", {"seconds": round(seconds, 1), "members": histories})
        print(f"scst: greedy dev CIDEr-D {sum(xe) / len(xe):.4f} -> {sum(best) / len(best):.4f} (mean of "
              f"{len(models)} member(s); best epochs {[h['best_epoch'] for h in histories]}), {seconds:.0f} s -> {args.out}")


if __name__ == "__main__":
    with reported_errors("scst"):
        main()
