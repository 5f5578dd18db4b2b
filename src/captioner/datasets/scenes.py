"""The embedded default data set: Pillow-drawn scenes of coloured shapes, 5 captions each,
written in the standard Flickr8k on-disk layout (so `load_dataset(root)` reads it).

A scene is one object (size, colour, shape, position) or two objects of different shapes side
by side or one above the other, on a background (white, black, grey, striped, checkered or
dotted). Caption 0 is
always the canonical sentence, e.g. "a large red circle on a white background" or "a red
circle and a blue square on a grey background" (two objects listed in the fixed `SHAPES`
order, whatever their places), so a captioner's single most likely sentence can match it. The
other 4 captions are 4 different variant templates (dropping the size, adding the position or
the spatial relation, swapping the order, "big"/"little", "against", "there is"...), with
random case and final punctuation: the cleaned words are what counts downstream.

Everything is drawn from `numpy.random.default_rng([seed, i])` per image: the same arguments
give byte-identical files.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from captioner.datasets.common import split_counts, validate_fractions
from captioner.datasets.flickr8k import IMAGE_DIRS, SPLIT_FILES, TOKEN_FILE
from captioner.runtime.io import atomic_path

__all__ = [
    "BACKGROUNDS", "COLOURS", "COLOUR_JITTER", "DEFAULT_IMAGE_SIZE", "DEFAULT_N_IMAGES", "DEFAULT_SEED",
    "DEFAULT_SPLIT_FRACTIONS", "EDGE_MARGIN", "GREY_JITTER", "IMAGE_PREFIX", "INVERSE_RELATION",
    "JPEG_QUALITY", "N_CAPTIONS", "ONE_CANONICAL", "ONE_VARIANTS", "PAIR_OFFSET", "PAIR_RADIUS",
    "PLAIN_GREYS", "POSITIONS", "POSITION_JITTER", "POSITION_PHRASES", "P_TWO_OBJECTS", "README",
    "RELATIONS", "RELATION_PHRASES", "ROTATION_JITTER", "SHAPES", "SIZES", "SIZE_JITTER", "SIZE_SYNONYMS",
    "SUPERSAMPLE", "TWO_CANONICAL", "TWO_VARIANTS", "Scene", "Shape", "assign_scene_splits",
    "canonical_caption", "caption_slots", "describe_scene", "draw_background", "fix_articles",
    "generate_scenes", "is_scene_image", "jpeg_bytes", "make_image", "object_centre", "render_scene",
    "sample_scene", "shape_polygon", "stylise",
]

DEFAULT_N_IMAGES = 1000
DEFAULT_IMAGE_SIZE = 128
DEFAULT_SEED = 0
DEFAULT_SPLIT_FRACTIONS: Mapping[str, float] = {"train": 0.7, "dev": 0.15, "test": 0.15}
JPEG_QUALITY = 92
SUPERSAMPLE = 2  # draw at 2x and downsample: anti-aliased edges
N_CAPTIONS = 5
P_TWO_OBJECTS = 0.35

# Canonical order of the shapes: two objects are named in this order in caption 0.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart")
COLOURS: Mapping[str, tuple[int, int, int]] = {
    "red": (220, 25, 25),
    "green": (25, 160, 45),
    "blue": (30, 70, 225),
    "yellow": (250, 215, 0),
    "purple": (135, 40, 185),
    "orange": (255, 125, 0),
    "pink": (255, 120, 190),
}
BACKGROUNDS: tuple[str, ...] = ("white", "black", "grey", "striped", "checkered", "dotted")
PLAIN_GREYS: Mapping[str, int] = {"white": 248, "black": 12, "grey": 128}  # the others: textures
SIZES: Mapping[str, float] = {"small": 0.16, "large": 0.29}  # object radius / image side
PAIR_RADIUS = 0.19  # radius of each of two objects
POSITIONS: tuple[str, ...] = ("centre", "left", "right", "top", "bottom")
# Random variation of the drawing (uniform +- these amounts).
SIZE_JITTER = 0.08  # relative radius
ROTATION_JITTER = 0.25  # radians
COLOUR_JITTER = 12  # per RGB channel
GREY_JITTER = 6  # plain backgrounds' grey level
POSITION_JITTER = 0.04  # fraction of the side
EDGE_MARGIN = 0.05  # off-centre objects keep this far from the border (fraction of the side)
PAIR_OFFSET = 0.23  # each object of a pair at least this far from the middle
RELATIONS: tuple[str, ...] = ("left", "above")  # first-named object is left of / above the other

IMAGE_PREFIX = "scene_"


@dataclass(frozen=True)
class Shape:
    """One drawn object: what it is and where (position is a word from `POSITIONS`)."""

    shape: str
    colour: str
    size: str
    position: str


@dataclass(frozen=True)
class Scene:
    """One image's content: one or two `Shape`s (canonical order) on a background."""

    objects: tuple[Shape, ...]
    background: str
    relation: str | None = None  # pair: first is "left"/"right" of, "above"/"below" the second


# ---------------------------------------------------------------- sampling


def sample_scene(rng: np.random.Generator, p_two: float = P_TWO_OBJECTS) -> Scene:
    """Draw a random scene: one object (any size/position) or two of different shapes."""
    background = str(rng.choice(BACKGROUNDS))
    if rng.random() >= p_two:
        obj = Shape(
            shape=str(rng.choice(SHAPES)),
            colour=str(rng.choice(list(COLOURS))),
            size=str(rng.choice(list(SIZES))),
            position=str(rng.choice(POSITIONS)),
        )
        return Scene((obj,), background)
    i, j = sorted(rng.choice(len(SHAPES), size=2, replace=False).tolist())
    ci, cj = rng.choice(len(COLOURS), size=2, replace=False).tolist()
    names = list(COLOURS)
    relation = str(rng.choice(RELATIONS))
    first_pos, second_pos = ("left", "right") if relation == "left" else ("top", "bottom")
    if rng.random() < 0.5:  # the canonically first object is on the other side
        relation = "right" if relation == "left" else "below"
        first_pos, second_pos = second_pos, first_pos
    a = Shape(SHAPES[i], names[ci], "medium", first_pos)
    b = Shape(SHAPES[j], names[cj], "medium", second_pos)
    return Scene((a, b), background, relation)


# ---------------------------------------------------------------- drawing


def shape_polygon(
    shape: str, cx: float, cy: float, r: float, angle: float
) -> list[tuple[float, float]]:
    """Vertices of `shape` centred at (cx, cy) with outer radius r, rotated by `angle` rad."""
    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in np.pi / 4 + np.arange(4) * np.pi / 2]
        pts = [(0.85 * x, 0.85 * y) for x, y in pts]  # half-side 0.6 r
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a) + 0.2) for a in -np.pi / 2 + np.arange(3) * 2 * np.pi / 3]
    elif shape == "star":
        a = -np.pi / 2 + np.arange(10) * np.pi / 5
        k = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)  # outer / inner points
        pts = list(zip((k * np.cos(a)).tolist(), (k * np.sin(a)).tolist()))
    elif shape == "heart":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) - 2.5
        pts = list(zip((x / 16.5).tolist(), (y / 16.5).tolist()))
    elif shape == "cross":
        w = 0.34
        half = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1)]
        pts = half + [(-x, -y) for x, y in half]
    else:
        raise ValueError(f"no polygon for shape {shape!r}")
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def draw_background(background: str, side: int, rng: np.random.Generator) -> Image.Image:
    """A `side` x `side` RGB background: a plain grey level or a grey-on-white texture."""
    if background in PLAIN_GREYS:
        v = PLAIN_GREYS[background] + int(rng.integers(-GREY_JITTER, GREY_JITTER + 1))
        v = int(np.clip(v, 0, 255))
        return Image.new("RGB", (side, side), (v, v, v))
    yy, xx = np.mgrid[0:side, 0:side]
    if background == "striped":
        half = max(int(rng.integers(side // 24, side // 14)), 1)
        coord = (xx, yy, xx + yy, xx - yy)[int(rng.integers(4))]
        arr = np.where((coord // half) % 2 == 0, 175, 245)
    elif background == "checkered":
        cell = max(int(rng.integers(side // 12, side // 7)), 1)
        arr = np.where((xx // cell + yy // cell) % 2 == 0, 165, 245)
    elif background == "dotted":
        cell = max(int(rng.integers(side // 14, side // 9)), 2)
        dx, dy = (xx % cell) - cell / 2, (yy % cell) - cell / 2
        arr = np.where(dx * dx + dy * dy < (cell * 0.22) ** 2, 150, 245)
    else:
        raise ValueError(f"unknown background {background!r}")
    arr = arr.astype(np.uint8)
    return Image.fromarray(np.stack([arr] * 3, axis=-1), "RGB")


def object_centre(
    obj: Shape,
    r: float,
    rng: np.random.Generator,
    margin: float = EDGE_MARGIN,
    jitter: float = POSITION_JITTER,
    pair_offset: float = PAIR_OFFSET,
) -> tuple[float, float]:
    """Centre (fractions of the side) of an object of radius r at its named position.

    Off-centre objects sit as far out as fits within `margin`; each of a pair at least
    `pair_offset` from the middle; both coordinates get a uniform +-`jitter`.
    """
    d = 0.5 - r - margin
    if obj.size == "medium":
        d = max(d, pair_offset)
    dx, dy = {
        "centre": (0.0, 0.0),
        "left": (-d, 0.0),
        "right": (d, 0.0),
        "top": (0.0, -d),
        "bottom": (0.0, d),
    }[obj.position]
    jx, jy = rng.uniform(-jitter, jitter, size=2).tolist()
    return 0.5 + dx + jx, 0.5 + dy + jy


def render_scene(
    scene: Scene, image_size: int, rng: np.random.Generator, supersample: int = SUPERSAMPLE
) -> Image.Image:
    """Draw `scene` as an `image_size` square RGB image (anti-aliased by supersampling)."""
    side = image_size * supersample
    img = draw_background(scene.background, side, rng)
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        base = PAIR_RADIUS if obj.size == "medium" else SIZES[obj.size]
        r = base * float(rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER))
        cx, cy = object_centre(obj, r, rng)
        colour = tuple(
            int(np.clip(v + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1), 0, 255))
            for v in COLOURS[obj.colour]
        )
        angle = float(rng.uniform(-ROTATION_JITTER, ROTATION_JITTER))
        if obj.shape == "circle":
            box = [(cx - r) * side, (cy - r) * side, (cx + r) * side, (cy + r) * side]
            draw.ellipse(box, fill=colour)
        else:
            pts = shape_polygon(obj.shape, cx * side, cy * side, r * side, angle)
            draw.polygon(pts, fill=colour)
    if supersample > 1:
        img = img.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return img


# ---------------------------------------------------------------- captions

POSITION_PHRASES: Mapping[str, tuple[str, ...]] = {
    "centre": ("in the centre", "in the middle"),
    "left": ("on the left", "on the left side"),
    "right": ("on the right", "on the right side"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
}
RELATION_PHRASES: Mapping[str, str] = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
}
INVERSE_RELATION: Mapping[str, str] = {
    "left": "right",
    "right": "left",
    "above": "below",
    "below": "above",
}
SIZE_SYNONYMS: Mapping[str, str] = {"small": "little", "large": "big"}

# Templates: {size} {size2} {colour} {shape} {pos} {bg} for one object;
# {a} {b} (first / second "colour shape") {rel} {rel_inv} {bg} for two.
ONE_CANONICAL = "a {size} {colour} {shape} on a {bg} background"
ONE_VARIANTS: tuple[str, ...] = (
    "a {colour} {shape} on a {bg} background",
    "a {size} {colour} {shape} {pos}",
    "there is a {size} {colour} {shape} {pos}",
    "a {colour} {shape} {pos} on a {bg} background",
    "a {size2} {colour} {shape} against a {bg} background",
    "a {bg} background with a {size} {colour} {shape} {pos}",
    "{pos} , a {size} {colour} {shape}",
    "a picture of a {size} {colour} {shape} on a {bg} background",
)
TWO_CANONICAL = "a {a} and a {b} on a {bg} background"
TWO_VARIANTS: tuple[str, ...] = (
    "a {a} {rel} a {b}",
    "a {b} {rel_inv} a {a}",
    "a {b} and a {a} on a {bg} background",
    "a {a} next to a {b}",
    "a {a} and a {b} against a {bg} background",
    "there is a {a} and a {b} on a {bg} background",
    "a {bg} background with a {a} and a {b}",
    "two shapes , a {a} and a {b}",
)


_A_BEFORE_VOWEL = re.compile(r"\b([Aa]) (?=[aeiou])")


def fix_articles(sentence: str) -> str:
    """Use "an" before a vowel: "a orange circle" -> "an orange circle"."""
    return _A_BEFORE_VOWEL.sub(r"\1n ", sentence)


def caption_slots(scene: Scene, rng: np.random.Generator) -> dict[str, str]:
    """Words that fill the templates for `scene` (position phrasing drawn at random)."""
    slots = {"bg": scene.background}
    if len(scene.objects) == 1:
        (o,) = scene.objects
        phrases = POSITION_PHRASES[o.position]
        slots |= {
            "size": o.size,
            "size2": SIZE_SYNONYMS[o.size],
            "colour": o.colour,
            "shape": o.shape,
            "pos": phrases[int(rng.integers(len(phrases)))],
        }
    else:
        a, b = scene.objects
        assert scene.relation is not None
        slots |= {
            "a": f"{a.colour} {a.shape}",
            "b": f"{b.colour} {b.shape}",
            "rel": RELATION_PHRASES[scene.relation],
            "rel_inv": RELATION_PHRASES[INVERSE_RELATION[scene.relation]],
        }
    return slots


def canonical_caption(scene: Scene) -> str:
    """The canonical (caption 0) sentence of `scene`, lowercase, no punctuation."""
    template = ONE_CANONICAL if len(scene.objects) == 1 else TWO_CANONICAL
    return fix_articles(template.format(**caption_slots(scene, np.random.default_rng(0))))


def stylise(sentence: str, rng: np.random.Generator, p_capital: float = 0.5) -> str:
    """Random surface form: maybe a capital first letter; ending '', '.' or ' .'.

    Commas are written attached ("left, a") or spaced ("left , a") at random.
    """
    if rng.random() < p_capital:
        sentence = sentence[:1].upper() + sentence[1:]
    if rng.random() < 0.5:
        sentence = sentence.replace(" ,", ",")
    return sentence + ("", ".", " .")[int(rng.integers(3))]


def describe_scene(
    scene: Scene, rng: np.random.Generator, n_captions: int = N_CAPTIONS
) -> list[str]:
    """`n_captions` different captions: the canonical one, then distinct random variants."""
    one = len(scene.objects) == 1
    canonical, variants = (ONE_CANONICAL, ONE_VARIANTS) if one else (TWO_CANONICAL, TWO_VARIANTS)
    if n_captions - 1 > len(variants):
        raise ValueError(f"n_captions={n_captions} but only {len(variants) + 1} templates")
    slots = caption_slots(scene, rng)
    chosen = rng.choice(len(variants), size=n_captions - 1, replace=False)
    sentences = [canonical.format(**slots)] + [variants[k].format(**slots) for k in chosen]
    return [stylise(fix_articles(s), rng) for s in sentences]


# ---------------------------------------------------------------- writing

def is_scene_image(path: Path) -> bool:
    """Whether `path` lies in a generated scenes folder (its root's README says so)."""
    readme = Path(path).resolve().parent.parent / "README.md"
    try:
        return readme.read_text(encoding="utf-8").startswith("# Generated scenes data set")
    except OSError:
        return False


README = """# Generated scenes data set

Generated by `captioner.datasets.scenes.generate_scenes` (not real photographs): {n_images}
images of coloured shapes ({image_size}x{image_size} JPEG, quality {quality}) with {n_captions}
captions each, seed {seed}, in the standard Flickr8k layout (`{image_dir}/`, `{token_file}`,
`Flickr_8k.{{train,dev,test}}Images.txt`). Splits: {splits}.
Caption 0 of each image is the canonical sentence; regenerate rather than edit.
"""


def jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    """Encode `img` as baseline JPEG bytes (deterministic for fixed settings)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=False, progressive=False)
    return buf.getvalue()


def make_image(
    i: int,
    seed: int,
    image_size: int,
    quality: int = JPEG_QUALITY,
    n_captions: int = N_CAPTIONS,
    p_two: float = P_TWO_OBJECTS,
) -> tuple[str, bytes, list[str], Scene]:
    """Image i of the data set: (image id, JPEG bytes, captions, scene); pure in (i, seed)."""
    rng = np.random.default_rng([seed, i])
    scene = sample_scene(rng, p_two)
    img = render_scene(scene, image_size, rng)
    captions = describe_scene(scene, rng, n_captions)
    return f"{IMAGE_PREFIX}{i:05d}", jpeg_bytes(img, quality), captions, scene


def assign_scene_splits(
    ids: Sequence[str], fractions: Mapping[str, float], seed: int
) -> dict[str, list[str]]:
    """Split the ids at random (with `seed`) into lists in their original order."""
    counts = split_counts(len(ids), fractions)
    order = np.random.default_rng([seed, len(ids), 7]).permutation(len(ids))
    out: dict[str, list[str]] = {}
    start = 0
    for split, k in counts.items():
        out[split] = [ids[j] for j in sorted(order[start : start + k].tolist())]
        start += k
    return out


def generate_scenes(
    root: Path,
    n_images: int = DEFAULT_N_IMAGES,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = DEFAULT_SEED,
    split_fractions: Mapping[str, float] = DEFAULT_SPLIT_FRACTIONS,
    progress: bool = True,
    *,
    jpeg_quality: int = JPEG_QUALITY,
    n_captions: int = N_CAPTIONS,
    p_two: float = P_TWO_OBJECTS,
) -> dict[str, Any]:
    """Write the scenes data set at `root` in the Flickr8k layout, atomically; return counts.

    The whole directory is built under a temporary name and renamed into place, replacing any
    previous one; a failure or kill leaves no partial `root`.
    """
    if n_images < 1 or image_size < 16:
        raise ValueError(f"need n_images >= 1 and image_size >= 16, got {n_images}, {image_size}")
    validate_fractions(split_fractions)
    root = Path(root)
    image_dir_name = IMAGE_DIRS[0]
    ids: list[str] = []
    token_lines: list[str] = []
    n_objects = {1: 0, 2: 0}
    with atomic_path(root) as tmp:
        (tmp / image_dir_name).mkdir(parents=True)
        for i in tqdm(range(n_images), desc="scenes", unit="img", disable=not progress):
            image_id, data, captions, scene = make_image(
                i, seed, image_size, jpeg_quality, n_captions, p_two
            )
            (tmp / image_dir_name / f"{image_id}.jpg").write_bytes(data)
            ids.append(image_id)
            token_lines += [f"{image_id}.jpg#{n}\t{c}" for n, c in enumerate(captions)]
            n_objects[len(scene.objects)] += 1
        (tmp / TOKEN_FILE).write_text("\n".join(token_lines) + "\n", encoding="utf-8")
        splits = assign_scene_splits(ids, split_fractions, seed)
        for split, members in splits.items():
            text = "".join(f"{m}.jpg\n" for m in members)
            (tmp / SPLIT_FILES[split]).write_text(text, encoding="utf-8")
        summary = {
            "n_images": n_images,
            "n_captions": len(token_lines),
            "image_size": image_size,
            "seed": seed,
            "splits": {s: len(m) for s, m in splits.items()},
            "objects": {"one": n_objects[1], "two": n_objects[2]},
        }
        (tmp / "README.md").write_text(
            README.format(
                n_images=n_images,
                image_size=image_size,
                quality=jpeg_quality,
                n_captions=n_captions,
                seed=seed,
                image_dir=image_dir_name,
                token_file=TOKEN_FILE,
                splits=", ".join(f"{s} {k}" for s, k in summary["splits"].items()),
            ),
            encoding="utf-8",
        )
    return summary
