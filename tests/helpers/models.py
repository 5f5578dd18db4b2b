"""A merge captioner trained in seconds on EfficientNet-Lite0 features of drawn photos, and how
the pipeline's evaluation decodes it: what the CLI, service and export tests compare against."""

from __future__ import annotations

import functools
from pathlib import Path

from PIL import Image

from captioner.config.decoding import DecodingConfig
from captioner.datasets.text import build_vocabulary
from captioner.model.build import build_merge_model
from captioner.model.folder import model_meta, save_model_folder

CAPTIONS = ["startseq a red square endseq", "startseq a blue circle on grey endseq"]



TINY_COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 50, 220), "yellow": (235, 215, 30)}



TINY_SHAPES = ("square", "circle")



def draw_tiny_photos(folder: Path, per_kind: int = 3) -> dict[Path, str]:
    """Photos of one coloured square or circle on grey (JPEG and PNG) -> their caption."""
    from PIL import ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    out: dict[Path, str] = {}
    for colour, rgb in TINY_COLOURS.items():
        for shape in TINY_SHAPES:
            for i in range(per_kind):
                im = Image.new("RGB", (120, 96), (120 + 10 * i, 120 + 10 * i, 120 + 10 * i))
                box = (20 + 8 * i, 12 + 4 * i, 90 + 8 * i, 82 + 2 * i)
                draw = ImageDraw.Draw(im)
                (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=rgb)
                path = folder / f"{colour}-{shape}-{i}.{'jpg' if i % 2 else 'png'}"
                im.save(path)
                out[path] = f"a {colour} {shape} on grey"
    return out



@functools.cache
def trained_tiny_model(base: Path) -> tuple[Path, dict[Path, str]]:
    """A merge captioner trained for a few seconds on Lite0 (ImageNet) features of 24 drawn
    photos: (its model folder, {photo: its caption}). Cached per pytest run (`base`: basetemp)."""
    from captioner.features.extract import extract
    from captioner.datasets.sequences import encode_captions
    from tests.helpers.toy import fit_toy

    photos = draw_tiny_photos(base / "tiny-photos")
    feats = extract(list(photos), _lite0(), 32, 1, False).features
    caps = [f"startseq {c} endseq" for c in photos.values()]
    vocab = build_vocabulary(caps, 1)
    model = build_merge_model(len(vocab), 1280, 16, 32, 0.0)
    import keras

    keras.utils.set_random_seed(0)
    fit_toy(model, encode_captions(caps, vocab, 10), feats, epochs=25)
    out = base / "tiny-model"
    save_model_folder(out, [model], vocab, model_meta(
        backbone="efficientnet_lite0", weights="imagenet", feature_dim=1280, vocab_size=len(vocab),
        member_kinds=["merge"], grid=False, best_epoch=25, best_val_loss=0.0))
    return out, photos



def evaluate_like_the_pipeline(model: Path, images: list[Path], config: DecodingConfig) -> list[str]:
    """Captions decoded exactly as stages/evaluate.py decodes (features from `extract`)."""
    from captioner.decoding.search import caption_texts, decode_folder

    return caption_texts(decode_folder(model, extract_features_like_the_pipeline(images), config, 256))



@functools.cache
def _lite0():
    from captioner.features.backbones import load_backbone

    return load_backbone("efficientnet_lite0", "imagenet")



def extract_features_like_the_pipeline(images: list[Path]):
    """As the extract_features stage: `features.extract` over the image files (Lite0, ImageNet)."""
    from captioner.features.extract import extract

    return extract(images, _lite0(), 32, 2, False).features



EVALUATED = DecodingConfig(beam_width=3, length_penalty=1.1, block_repeat_ngram=2, max_length=4)



def release_folder(tmp_path_factory) -> tuple[Path, dict[Path, str]]:
    """The trained tiny model with decoding.json (the evaluation's settings), and its photos."""
    import shutil

    from captioner.model.folder import write_decoding

    model, photos = trained_tiny_model(tmp_path_factory.getbasetemp())
    out = tmp_path_factory.mktemp("serve") / "release"
    shutil.copytree(model, out)
    write_decoding(out, EVALUATED)
    return out, photos
