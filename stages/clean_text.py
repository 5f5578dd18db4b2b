"""Stage: parse captions and splits, clean captions, build the vocabulary (JSON).

data/text/{split}.parquet: image_id, caption_no, caption (cleaned, wrapped in the start and end
markers) and raw_caption (the data set's text as read, which the coco-caption metrics tokenise);
images.parquet (image_id, split, project-relative path), vocab.json and report.json."""

import argparse
import os
from pathlib import Path

from _stage import run_stage

from captioner.config.params import check_data_root, load_params
from captioner.datasets.readers import load_dataset
from captioner.datasets.text import build_vocabulary, clean_table, save_vocabulary
from captioner.runtime.io import atomic_path, write_json

REQUIRED_SPLITS = ("train", "dev")  # train builds the vocabulary and the model, dev stops training


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="data/text")
    args = ap.parse_args()
    params = load_params()
    data, text = params.data, params.text
    ds = load_dataset(check_data_root(params), data.layout, seed=data.seed, max_bad_fraction=data.max_bad_fraction)
    missing = [s for s in REQUIRED_SPLITS if s not in set(ds.captions["split"])]
    if missing:
        raise ValueError(
            f"{data.root}: no usable image in the {' and '.join(missing)} split(s) (train builds the "
            f"vocabulary and the model, dev stops training); reader report: {ds.report.get('ignored')}"
        )
    caps, counts = clean_table(ds.captions, text.max_words)
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
        report = {"layout": ds.layout, "images": ds.images.groupby("split").size().to_dict(),
                  "captions": caps.groupby("split").size().to_dict(), "vocab_size": len(vocab), **counts,
                  "reader": ds.report}
        write_json(tmp / "report.json", report)
    print(f"clean_text: {report['captions']} captions, vocabulary {len(vocab)} ({Path(args.out)})")
    if ds.report:
        print(f"clean_text: ignored while reading {data.root}: see {args.out}/report.json")


if __name__ == "__main__":
    run_stage("clean_text", main)
