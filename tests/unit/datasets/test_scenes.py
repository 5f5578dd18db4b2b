"""The generated scenes data set: layout, captions, determinism, atomic writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.datasets.readers import load_dataset
from captioner.datasets import scenes
from captioner.datasets.scenes import (
    SHAPES,
    Scene,
    Shape,
    canonical_caption,
    describe_scene,
    generate_scenes,
    make_image,
    render_scene,
    sample_scene,
)
from captioner.datasets.text import clean_caption

FRACTIONS = {"train": 0.7, "dev": 0.15, "test": 0.15}


def tree(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("scenes") / "data"
    summary = generate_scenes(root, 40, 64, 3, FRACTIONS, progress=False)
    return root, summary


def test_layout_and_summary(small: tuple[Path, dict]) -> None:
    root, summary = small
    assert sorted(p.name for p in root.iterdir()) == [
        "Flicker8k_Dataset",
        "Flickr8k.token.txt",
        "Flickr_8k.devImages.txt",
        "Flickr_8k.testImages.txt",
        "Flickr_8k.trainImages.txt",
        "README.md",
    ]
    assert "generated" in (root / "README.md").read_text().lower()
    assert summary["n_images"] == 40 and summary["n_captions"] == 200
    assert summary["splits"] == {"train": 28, "dev": 6, "test": 6}
    assert sum(summary["objects"].values()) == 40
    assert len(list((root / "Flicker8k_Dataset").glob("*.jpg"))) == 40
    with Image.open(next((root / "Flicker8k_Dataset").glob("*.jpg"))) as im:
        assert im.format == "JPEG" and im.size == (64, 64) and im.mode == "RGB"
    first = (root / "Flickr8k.token.txt").read_text().splitlines()[0]
    assert first.startswith("scene_00000.jpg#0\t")


def test_reads_back_as_flickr8k(small: tuple[Path, dict]) -> None:
    root, summary = small
    ds = load_dataset(root)
    assert ds.layout == "flickr8k"
    assert ds.report["ignored"] == {} and ds.report["repaired"] == {}
    assert ds.images.groupby("split").size().to_dict() == summary["splits"]
    per_image = ds.captions.groupby("image_id")
    assert (per_image.size() == 5).all()
    assert (per_image["caption"].agg(lambda c: len({clean_caption(x) for x in c})) == 5).all()


def test_caption_zero_is_canonical() -> None:
    for i in range(30):
        _, _, captions, scene = make_image(i, 0, 32)
        assert clean_caption(captions[0]) == canonical_caption(scene)


def test_canonical_captions() -> None:
    one = Scene((Shape("circle", "red", "large", "left"),), "white")
    assert canonical_caption(one) == "a large red circle on a white background"
    two = Scene(
        (Shape("circle", "orange", "medium", "right"), Shape("star", "blue", "medium", "left")),
        "striped",
        relation="right",
    )
    assert canonical_caption(two) == "an orange circle and a blue star on a striped background"
    captions = describe_scene(two, np.random.default_rng(0), 5)
    assert len({clean_caption(c) for c in captions}) == 5
    assert all("a orange" not in c.lower() for c in captions)
    with pytest.raises(ValueError, match="n_captions=12"):
        describe_scene(one, np.random.default_rng(0), 12)


def test_two_objects_in_canonical_order() -> None:
    rng = np.random.default_rng(0)
    pairs = [s for s in (sample_scene(rng, p_two=1.0) for _ in range(50))]
    for s in pairs:
        a, b = s.objects
        assert SHAPES.index(a.shape) < SHAPES.index(b.shape) and a.colour != b.colour
        assert {a.position, b.position} in ({"left", "right"}, {"top", "bottom"})


def test_render_shows_the_colour() -> None:
    scene = Scene((Shape("square", "red", "large", "centre"),), "white")
    img = np.asarray(render_scene(scene, 64, np.random.default_rng(0)), dtype=int)
    assert img.shape == (64, 64, 3)
    r, g, b = img[32, 32]
    assert r > 180 and g < 80 and b < 80
    assert (img[1, 1] > 230).all()  # white corner


def test_deterministic(tmp_path: Path, small: tuple[Path, dict]) -> None:
    root, _ = small
    generate_scenes(tmp_path / "same", 40, 64, 3, FRACTIONS, progress=False)
    assert tree(tmp_path / "same") == tree(root)
    generate_scenes(tmp_path / "other", 40, 64, 4, FRACTIONS, progress=False)
    a, b = tree(tmp_path / "other"), tree(root)
    assert a.keys() == b.keys()
    assert a["Flickr8k.token.txt"] != b["Flickr8k.token.txt"]
    assert a["Flicker8k_Dataset/scene_00000.jpg"] != b["Flicker8k_Dataset/scene_00000.jpg"]


def test_atomic_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = scenes.make_image

    def failing(i: int, *args: object) -> tuple:
        if i == 5:
            raise RuntimeError("killed midway")
        return real(i, *args)

    monkeypatch.setattr(scenes, "make_image", failing)
    with pytest.raises(RuntimeError, match="killed midway"):
        generate_scenes(tmp_path / "data", 10, 32, 0, FRACTIONS, progress=False)
    assert list(tmp_path.iterdir()) == []  # no partial directory, no temporary left over

    monkeypatch.setattr(scenes, "make_image", real)
    generate_scenes(tmp_path / "data", 10, 32, 0, FRACTIONS, progress=False)
    before = tree(tmp_path / "data")
    monkeypatch.setattr(scenes, "make_image", failing)
    with pytest.raises(RuntimeError):
        generate_scenes(tmp_path / "data", 10, 32, 1, FRACTIONS, progress=False)
    assert tree(tmp_path / "data") == before  # the previous data set is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_images >= 1"):
        generate_scenes(tmp_path / "d", 0, 64, 0, FRACTIONS, progress=False)
    with pytest.raises(ValueError, match="sum to 1"):
        generate_scenes(tmp_path / "d", 5, 64, 0, {"train": 0.5}, progress=False)
    assert not (tmp_path / "d").exists()
