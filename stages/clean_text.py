"""Stage: parse captions and splits, clean captions, build the vocabulary (JSON).

data/text/{split}.parquet: image_id, caption_no, caption (cleaned, wrapped in the start and end
markers) and raw_caption (the data set's text as read, which the coco-caption metrics tokenise)."""

import argparse
import os
import sys
from pathlib import Path

try:  # first: a Python without the project's packages stops here, in one line; TensorFlow quiet
    from captioner.console import setup_stage_output
except ModuleNotFoundError as e:
    sys.exit(f"{sys.argv[0]}: {sys.executable} has no '{e.name}': activate the project's venv "
             "(`source .venv/bin/activate`) and rerun; `dvc checkout` restores removed outputs")
setup_stage_output()

from captioner.datasets import load_dataset
from captioner.io import atomic_path, exit_on_sigterm, reported_errors, write_json
from captioner.params import check_data_root, load_params
from captioner.text import build_vocabulary, clean_caption, save_vocabulary, wrap

REQUIRED_SPLITS = ("train", "dev")


def main() -> None:
    exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="data/text")
    args = ap.parse_args()
    params = load_params()
    data, text = params.data, params.text
    ds = load_dataset(
        check_data_root(params), data.layout, seed=data.seed,
        max_bad_fraction=data.max_bad_fraction,
    )
    missing = [s for s in REQUIRED_SPLITS if s not in set(ds.captions["split"])]
    if missing:
        raise ValueError(
            f"{data.root}: no usable image in the {' and '.join(missing)} split(s) (train builds the "
            f"vocabulary and the model, dev stops training); reader report: {ds.report.get('ignored')}"
        )
    caps = ds.captions.copy()
    caps["raw_caption"] = caps["caption"]  # the data set's own text, for the coco-caption metrics
    cleaned = caps["caption"].map(clean_caption)
    n_long = int((cleaned.str.split().str.len() > text.max_words).sum())
    caps["caption"] = [wrap(clean_caption(c, text.max_words)) for c in caps["caption"]]
    n_empty = int((cleaned == "").sum())
    vocab = build_vocabulary(caps.loc[caps["split"] == "train", "caption"], text.min_count)

    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        for split, part in caps.groupby("split", sort=True):
            cols = ["image_id", "caption_no", "caption", "raw_caption"]
            part[cols].reset_index(drop=True).to_parquet(tmp / f"{split}.parquet", index=False)
        images = ds.images[["image_id", "split", "path"]].copy()
        images["path"] = [os.path.relpath(p) for p in images["path"]]  # portable: project-relative
        images.to_parquet(tmp / "images.parquet", index=False)
        save_vocabulary(tmp / "vocab.json", vocab, min_count=text.min_count)
        report = {
            "layout": ds.layout,
            "images": ds.images.groupby("split").size().to_dict(),
            "captions": caps.groupby("split").size().to_dict(),
            "vocab_size": len(vocab),
            "captions_truncated": n_long,
            "captions_empty_after_cleaning": n_empty,
            "reader": ds.report,
        }
        write_json(tmp / "report.json", report)
    print(f"clean_text: {report['captions']} captions, vocabulary {len(vocab)} ({Path(args.out)})")
    if ds.report:
        print(f"clean_text: ignored while reading {data.root}: see {args.out}/report.json")


if __name__ == "__main__":
    with reported_errors("clean_text"):
        main()
