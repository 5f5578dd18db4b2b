"""The params.yaml schema, loading and validation, in one place.

Every knob of the pipeline lives in params.yaml; stages read their sections through
`load_params`, which fails fast on unknown keys, wrong types and impossible values with a
message naming the key (e.g. ``train.batch_size: Input should be greater than 0``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from captioner.config.decoding import DecodingConfig

__all__ = [
    "BACKBONES", "SPLITS", "Backbone", "DataParams", "EvaluateParams", "FeaturesParams", "ModelParams", "Params",
    "ParamsError", "ScenesParams", "ScstParams", "SequencesParams", "Split", "TextParams", "TrainParams",
    "check_data_root", "flatten", "load_params", "update_params_file",
]

Split = Literal["train", "dev", "test"]
SPLITS: tuple[str, ...] = get_args(Split)  # the data set splits, in this order everywhere
Backbone = Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "vgg16"]
BACKBONES: tuple[str, ...] = get_args(Backbone)  # the CNNs of captioner.features.backbones


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    """Where the data set is and how it is laid out."""

    root: str = "data/raw/scenes"
    layout: Literal["auto", "flickr8k", "kaggle", "karpathy"] = "auto"
    seed: int = 0  # only for layouts without split files (Kaggle)
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)


class ScenesParams(_Section):
    """The embedded, generated data set."""

    n_images: int = Field(1000, gt=0)
    image_size: int = Field(128, ge=32, le=1024)
    seed: int = 0
    split_fractions: dict[str, float] = {"train": 0.7, "dev": 0.15, "test": 0.15}

    @field_validator("split_fractions")
    @classmethod
    def _fractions(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; use {list(SPLITS)}")
        if any(f < 0 for f in v.values()) or abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError("fractions must be >= 0 and sum to 1")
        return v


class TextParams(_Section):
    """Caption cleaning and the vocabulary."""

    min_count: int = Field(1, ge=1)
    max_words: int = Field(40, gt=0)  # longer cleaned captions are truncated (counted)


class FeaturesParams(_Section):
    """The pre-trained CNN that turns an image into a feature vector."""

    backbone: Backbone = "efficientnet_lite0"
    weights: str = "imagenet"  # imagenet | none | path to a local weights file (vgg16)
    batch_size: int = Field(32, gt=0)
    workers: int = Field(2, gt=0)
    max_bad_images: float = Field(0.01, ge=0.0, le=1.0)  # unreadable images are skipped; more is an error
    spatial: Literal["pooled", "grid"] = "pooled"  # one vector per image, or the region grid (attention)
    dtype: Literal["float32", "float16"] = "float32"  # stored precision (float16 halves a grid's size)
    # local: this process; ray: a Ray actor pool runs the same decode + CNN per batch (RAY_ADDRESS
    # joins a cluster), the file is byte for byte the local one (docs/SCALE.md)
    engine: Literal["local", "ray"] = "local"
    threads: int = Field(2, ge=1)  # TensorFlow intra/inter-op threads, pinned in both engines (float sums)
    actors: int = Field(0, ge=0)  # ray: CNN actors (each `threads` CPUs or one GPU); 0 = as many as fit


class SequencesParams(_Section):
    """Integer encoding of captions."""

    max_length: int = Field(42, ge=3)  # tokens incl. startseq/endseq; longer ones are cut


class ModelParams(_Section):
    """The decoder: the Keras tutorial's merge captioner, or soft attention over image regions."""

    kind: Literal["merge", "attention"] = "merge"
    embedding_dim: int = Field(256, gt=0)
    units: int = Field(256, gt=0)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    attention_dim: int = Field(256, gt=0)  # attention only: size of the additive-attention layer
    attention_reg: float = Field(0.1, ge=0.0)  # attention only: doubly-stochastic penalty weight
    region_dropout: float = Field(0.5, ge=0.0, lt=1.0)  # attention only: dropout on the region features


class TrainParams(_Section):
    """The fit loop."""

    seed: int = 42
    epochs: int = Field(20, gt=0)
    batch_size: int = Field(64, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    patience: int = Field(3, ge=1)
    lr_factor: float = Field(1.0, gt=0.0, le=1.0)  # multiply the LR by this when val loss stalls; 1 = off
    lr_patience: int = Field(1, ge=1)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    ensemble: int = Field(1, ge=1)  # models trained (seeds seed, seed+1, ...); decoding averages them
    merge_members: int = Field(0, ge=0)  # attention only: the last this many members are merge models
    bucket_width: int = Field(4, ge=1)  # captions of similar length share a batch
    # auto (captioner.training.precision): mixed_float16 on a GPU, mixed_bfloat16 on a CPU with AVX512_BF16
    # or AMX, float32 otherwise. Mixed: layers compute in bfloat16/float16 (variables, loss and
    # saved models stay float32); with those flags bfloat16 trained the Flickr8k presets 1.5x
    # faster, the small embedded default 0.58x as fast (params.yaml); without them, much slower.
    precision: Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"] = "float32"
    # local: members one after another here; ray: members as parallel Ray tasks (one GPU each
    # where the cluster has GPUs, else `threads` CPUs each), same weights for the same seeds
    engine: Literal["local", "ray"] = "local"
    threads: int = Field(2, ge=1)  # TensorFlow intra/inter-op threads, pinned in both engines
    # replicas of one model (tf.distribute.MirroredStrategy on one host): 0 = every visible GPU
    # when there are several, else one device; N > 1 = N GPUs (or N logical CPUs in tests);
    # batch_size is per device, so the global batch is batch_size x devices
    devices: int = Field(0, ge=0)
    # features are streamed from the Parquet file in windows of row groups of about this many MB
    # (two in memory: one in use, the next being read); memory no longer grows with the data set
    feature_window_mb: float = Field(256.0, gt=0)
    max_batches: int = Field(0, ge=0)  # > 0: at most this many train and dev batches per epoch (smoke runs)


class ScstParams(_Section):
    """Self-critical training (captioner.training.scst) of the cross-entropy model toward CIDEr-D: its own
    stage, so a change here reruns scst and evaluate, never train."""

    epochs: int = Field(0, ge=0)  # 0 = off: data/model is the cross-entropy model, copied
    samples: int = Field(5, ge=1)  # captions sampled per image (temperature 1)
    baseline: Literal["mean", "greedy"] = "mean"  # other samples' mean (Luo 2020) | greedy caption (Rennie 2017)
    learning_rate: float = Field(5e-5, gt=0)  # Adam, a fresh optimiser per member
    batch_size: int = Field(32, gt=0)  # images per step (x samples captions)
    max_length: int = Field(20, ge=1)  # words sampled at most
    # After each epoch (of every member) the ensemble's dev captions, decoded as `select` says, are
    # scored by CIDEr-D; the best epoch is kept and SCST stops after `patience` epochs without a
    # better one (or at `epochs`). Not evaluate's decoding: re-tuning that must not rerun SCST.
    patience: int = Field(1, ge=1)
    select: DecodingConfig = DecodingConfig(beam_width=5, block_repeat_ngram=2)


class EvaluateParams(DecodingConfig):
    """Decoding (the fields of captioner.config.decoding.DecodingConfig: beam_width,
    length_penalty, block_repeat_ngram, max_length) and scoring."""

    split: Split = "dev"  # experiments are compared on dev; test is quoted once
    batch_size: int = Field(256, gt=0)
    gallery_size: int = Field(24, ge=0)
    # local: decode here; ray: the images' features decoded in parallel shards (whole batches of
    # batch_size), corpus metrics computed once over all captions
    engine: Literal["local", "ray"] = "local"
    threads: int = Field(2, ge=1)  # TensorFlow intra/inter-op threads, pinned in both engines
    shards: int = Field(0, ge=0)  # ray: decoding tasks; 0 = one per `threads` CPUs of the cluster


class Params(_Section):
    """All of params.yaml."""

    data: DataParams = DataParams()
    scenes: ScenesParams = ScenesParams()
    text: TextParams = TextParams()
    features: FeaturesParams = FeaturesParams()
    sequences: SequencesParams = SequencesParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    scst: ScstParams = ScstParams()
    evaluate: EvaluateParams = EvaluateParams()

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        if self.features.backbone.startswith("efficientnet_lite") and self.features.weights not in (
            "imagenet",
            "none",
        ):
            raise ValueError(f"features.weights: {self.features.backbone} takes 'imagenet' or 'none'")
        if self.scst.baseline == "mean" and self.scst.samples < 2:
            raise ValueError("scst.samples: the 'mean' baseline needs at least 2 samples per image")
        if self.model.kind == "attention" and self.features.spatial != "grid":
            raise ValueError("model.kind: 'attention' needs region features: set features.spatial: grid")
        if self.train.merge_members and (self.model.kind != "attention" or self.train.merge_members >= self.train.ensemble):
            raise ValueError(
                "train.merge_members: only for model.kind attention, and fewer than train.ensemble "
                "(at least one attention member)"
            )
        if self.model.kind == "merge" and self.features.spatial != "pooled":
            raise ValueError("model.kind: 'merge' takes pooled features: set features.spatial: pooled")
        return self


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the key."""


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ParamsError naming the file and key on problems."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ParamsError(f"{p}: file not found") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{p}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{p}: expected a mapping of sections at the top level")
    try:
        params = Params.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(x) for x in err["loc"]) or "(top level)"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            lines.append(f"  {key}: {msg}")
        raise ParamsError(f"{p}: invalid parameters\n" + "\n".join(lines)) from None
    return params


def check_data_root(params: Params, base: Path = Path(".")) -> Path:
    """Return the data root, raising ParamsError when it does not exist."""
    root = base / params.data.root
    if not root.exists():
        raise ParamsError(f"data.root: {root} does not exist")
    return root


def flatten(tree: dict | BaseModel, prefix: str = "") -> dict[str, object]:
    """{"train": {"epochs": 5}} -> {"train.epochs": 5} (lists and dicts of leaves kept whole). Given
    params as a model, every nested settings model is flattened too ("scst.select.beam_width"),
    while dict-valued settings (data.split_fractions) stay whole."""
    if isinstance(tree, BaseModel):
        out_m: dict[str, object] = {}
        for key in type(tree).model_fields:
            value = getattr(tree, key)
            if isinstance(value, BaseModel):
                out_m.update(flatten(value, f"{prefix}{key}."))
            else:
                out_m[f"{prefix}{key}"] = value
        return out_m
    out: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name.count(".") < 1:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def update_params_file(path: str | Path, updates: dict[str, dict[str, object]]) -> None:
    """Merge `{section: {key: value}}` into a params.yaml file (for scripts and tests)."""
    p = Path(path)
    params = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    for section, values in updates.items():
        params.setdefault(section, {}).update(values)
    p.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """`python -m captioner.config.params [--params FILE]`: validate params.yaml (presets: `python -m
    captioner.config.presets`)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m captioner.config.params", description=main.__doc__)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        load_params(args.params)
        print(f"{args.params}: valid")
    except ParamsError as e:
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    main()
