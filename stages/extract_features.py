"""Stage: one CNN feature vector per image of every split -> Parquet."""

import argparse

from captioner.backbones import load_backbone
from captioner.datasets import load_dataset
from captioner.features import extract_features, write_features
from captioner.params import check_data_root, load_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    params = load_params()
    data, feat = params.data, params.features
    ds = load_dataset(
        check_data_root(params), data.layout, seed=data.seed,
        max_bad_fraction=data.max_bad_fraction,
    )
    images = ds.images.sort_values("image_id").reset_index(drop=True)
    backbone = load_backbone(feat.backbone, feat.weights)
    print(f"extract_features: {len(images)} images with {backbone.name} ({backbone.feature_dim}-d)")
    features = extract_features(
        list(images["path"]), backbone, batch_size=feat.batch_size, workers=feat.workers
    )
    write_features(
        args.out, list(images["image_id"]), features,
        {"backbone": backbone.name, "weights": feat.weights, "feature_dim": backbone.feature_dim},
    )


if __name__ == "__main__":
    main()
