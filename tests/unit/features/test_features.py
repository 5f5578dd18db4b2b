"""Tests for captioner.features.extract: batched, overlapped extraction and the Parquet feature file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from captioner.features.backbones import Backbone
from captioner.features.extract import Extraction, decoded_batches, extract, extract_features
from captioner.features.store import read_features, write_features
from captioner.features.images import ImageError, load_image
from tests.helpers.toy import tiny_backbone as make_tiny_backbone

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
SIZE = 16


@pytest.fixture(scope="module")
def tiny_backbone() -> Backbone:
    return make_tiny_backbone(SIZE, dim=5, filters=8)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Eleven distinct small JPEGs/PNGs of assorted sizes (not a multiple of the batch size)."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(1)
    paths = []
    for i in range(11):
        h, w = 20 + 3 * i, 40 - 2 * i
        path = root / f"img{i:02d}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _one_by_one(paths: list[Path], backbone: Backbone) -> np.ndarray:
    return np.concatenate([extract_features([p], backbone, 1, 0, progress=False) for p in paths])


def test_order_preserved_and_overlap_matches_sequential(images: list[Path], tiny_backbone: Backbone) -> None:
    reference = _one_by_one(images, tiny_backbone)
    assert reference.shape == (11, 5) and reference.dtype == np.float32
    assert len({tuple(r) for r in reference.round(5)}) == 11  # rows are distinguishable
    for batch_size, workers, prefetch in [(4, 0, 1), (4, 2, 1), (3, 3, 3), (32, 2, 2)]:
        got = extract(images, tiny_backbone, batch_size, workers, progress=False, prefetch=prefetch).features
        np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-6, err_msg=f"{batch_size=} {workers=}")
    reversed_ = extract_features(images[::-1], tiny_backbone, 4, 2, progress=False)
    np.testing.assert_allclose(reversed_, reference[::-1], rtol=1e-5, atol=1e-6)


def test_decoded_batches_sizes_and_order(images: list[Path]) -> None:
    batches = list(decoded_batches(images, SIZE, batch_size=4, workers=2))
    assert [len(b) for b in batches] == [4, 4, 3]
    flat = [d.pixels for batch in batches for d in batch]
    for pixels, path in zip(flat, images, strict=True):  # each image's own pixels, in order
        np.testing.assert_array_equal(pixels, load_image(path, SIZE))
    assert all(d.problem is None for batch in batches for d in batch)
    sequential = [d.pixels for batch in decoded_batches(images, SIZE, 4, 0) for d in batch]
    assert all(np.array_equal(a, b) for a, b in zip(flat, sequential, strict=True))


def test_bad_image_error_names_the_file(tmp_path: Path, images: list[Path], tiny_backbone: Backbone) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not really a jpeg")
    paths = [*images[:5], bad, *images[5:]]
    for workers in (0, 2):
        with pytest.raises(ImageError, match=r"broken\.jpg: not a recognised image format"):
            extract_features(paths, tiny_backbone, 4, workers, progress=False)


def test_skip_mode_reports_bad_images(tmp_path: Path, images: list[Path], tiny_backbone: Backbone) -> None:
    missing, empty = tmp_path / "missing.jpg", tmp_path / "empty.png"
    empty.write_bytes(b"")
    paths = [images[0], missing, *images[1:4], empty]
    result = extract(paths, tiny_backbone, 4, 2, progress=False, on_error="skip")
    assert isinstance(result, Extraction)
    assert result.ok_mask.tolist() == [True, False, True, True, True, False]
    assert result.errors == [(str(missing), "file not found"), (str(empty), "empty file")]
    assert np.isnan(result.features[~result.ok_mask]).all()
    np.testing.assert_allclose(
        result.features[result.ok_mask], _one_by_one(images[:4], tiny_backbone), rtol=1e-5, atol=1e-6
    )


def test_features_can_stay_in_the_shards_and_be_written_block_by_block(
    tmp_path: Path, images: list[Path], tiny_backbone: Backbone, monkeypatch
) -> None:
    """extract(collect=False) keeps no features in memory; the file written from its shards, a
    row group at a time, is byte for byte the one written from the collected features."""
    from captioner.features import store as features_mod
    from captioner.features.shards import shard_features
    from captioner.features.store import write_feature_blocks

    missing = tmp_path / "missing.jpg"
    paths = [*images[:3], missing, *images[3:6]]
    ids = [f"img{i}" for i in range(len(paths))]
    whole = extract(paths, tiny_backbone, 3, 2, progress=False, on_error="skip")
    lean = extract(paths, tiny_backbone, 3, 2, progress=False, on_error="skip", shards=tmp_path / "shards",
                   collect=False)
    assert lean.features is None and lean.ok_mask.tolist() == whole.ok_mask.tolist()
    monkeypatch.setattr(features_mod, "ROW_GROUP_BYTES", 2 * 5 * 4)  # 2 rows a group: groups cross batches
    ok = whole.ok_mask
    write_features(tmp_path / "a.parquet", [i for i, g in zip(ids, ok) if g], whole.features[ok], {"backbone": "t"})
    good_ids = [[i for i, g in zip(ids[s : s + 3], ok[s : s + 3]) if g] for s in range(0, len(ids), 3)]
    write_feature_blocks(tmp_path / "b.parquet", zip(good_ids, shard_features(tmp_path / "shards", 3, ok, 3)), 5,
                         {"backbone": "t"})
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    with pytest.raises(ValueError, match="give a shards folder"):
        extract(paths, tiny_backbone, 3, 2, progress=False, on_error="skip", collect=False)
    with pytest.raises(ValueError, match="b.parquet: duplicate image ids"):
        write_feature_blocks(tmp_path / "b.parquet", [(["x", "y"], np.zeros((2, 5))), (["x"], np.zeros((1, 5)))],
                             5, {"backbone": "t"})


def test_empty_input_and_bad_arguments(tiny_backbone: Backbone) -> None:
    assert extract_features([], tiny_backbone, 4, 2, progress=False).shape == (0, 5)
    with pytest.raises(ValueError, match="batch_size"):
        extract_features([], tiny_backbone, 0, 2, progress=False)


def test_lite0_extraction_matches_torch_reference() -> None:
    from captioner.features.backbones import load_backbone

    ref = np.load(FIXTURES / "lite0_reference.npz")
    paths = [FIXTURES / f"lite0_{n}.webp" for n in ref["names"]]
    feats = extract_features(
        paths, load_backbone("efficientnet_lite0"), batch_size=2, workers=2, progress=False
    )
    np.testing.assert_allclose(feats, ref["features"], rtol=0, atol=1e-4)


# ---------------------------------------------------------------- Parquet feature file


def test_parquet_roundtrip_and_metadata(tmp_path: Path) -> None:
    feats = np.random.default_rng(0).standard_normal((7, 12)).astype(np.float32)
    ids = [f"{i}.jpg" for i in range(7)]
    path = tmp_path / "sub" / "features.parquet"
    write_features(path, ids, feats, {"backbone": "vgg16", "image_size": 224})
    got_ids, got, meta = read_features(path)
    assert got_ids == ids and got.dtype == np.float32 and got.shape == (7, 12)
    np.testing.assert_array_equal(got, feats)
    assert meta == {"backbone": "vgg16", "image_size": "224", "feature_dim": "12"}
    schema = pq.read_schema(path)
    assert schema.field("image_id").type == pa.string()
    assert schema.field("feature").type == pa.list_(pa.float32(), 12)
    assert [p.name for p in path.parent.iterdir()] == ["features.parquet"]  # no temp files left


def test_float16_grid_file_in_row_groups(tmp_path: Path, monkeypatch) -> None:
    import captioner.features.store as features

    monkeypatch.setattr(features, "ROW_GROUP_BYTES", 3 * 8 * 4)  # 3 rows per group
    grid = np.random.default_rng(0).uniform(0, 6, (10, 8)).astype(np.float32)
    ids = [f"{i}.jpg" for i in range(10)]
    path = tmp_path / "grid.parquet"
    write_features(path, ids, grid, {"backbone": "x", "spatial": "grid", "regions": 4, "channels": 2},
                   dtype="float16")
    got_ids, got, meta = read_features(path)
    assert got_ids == ids and got.dtype == np.float16 and meta["regions"] == "4"
    np.testing.assert_array_equal(got, grid.astype(np.float16))
    assert np.abs(got.astype(np.float32) - grid).max() < 6 * 2**-10  # float16: 11 significant bits
    assert pq.ParquetFile(path).metadata.num_row_groups == 4
    assert pq.read_schema(path).field("feature").type == pa.list_(pa.float16(), 8)
    with pytest.raises(ValueError, match=r"bad\.parquet: features exceed the float16 range"):
        write_features(tmp_path / "bad.parquet", ids, grid * 1e5, {"backbone": "x"}, dtype="float16")
    assert not (tmp_path / "bad.parquet").exists()
    with pytest.raises(ValueError, match="dtype must be one of"):
        write_features(tmp_path / "bad.parquet", ids, grid, {"backbone": "x"}, dtype="int8")


def test_parquet_multiple_row_groups(tmp_path: Path) -> None:
    feats = np.arange(30, dtype=np.float32).reshape(10, 3)
    table = pa.table(
        {
            "image_id": [str(i) for i in range(10)],
            "feature": pa.FixedSizeListArray.from_arrays(pa.array(feats.ravel()), 3),
        }
    )
    pq.write_table(table, tmp_path / "f.parquet", row_group_size=4)
    ids, got, meta = read_features(tmp_path / "f.parquet")
    assert ids == [str(i) for i in range(10)] and meta == {}
    np.testing.assert_array_equal(got, feats)


def test_write_features_validates(tmp_path: Path) -> None:
    path = tmp_path / "f.parquet"
    feats = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"f\.parquet: 1 image ids for 2 feature rows"):
        write_features(path, ["a"], feats, {"backbone": "x"})
    with pytest.raises(ValueError, match=r"f\.parquet: duplicate image ids"):
        write_features(path, ["a", "a"], feats, {"backbone": "x"})
    with pytest.raises(ValueError, match=r"must include 'backbone'"):
        write_features(path, ["a", "b"], feats, {})
    with pytest.raises(ValueError, match=r"feature_dim=4 but features have D=3"):
        write_features(path, ["a", "b"], feats, {"backbone": "x", "feature_dim": 4})
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        write_features(path, ["a", "b"], np.zeros(2), {"backbone": "x"})
    assert not path.exists()


def test_read_features_errors_name_the_file(tmp_path: Path) -> None:
    pq.write_table(pa.table({"image_id": ["a"], "vec": [[1.0]]}), tmp_path / "nocol.parquet")
    with pytest.raises(ValueError, match=r"nocol\.parquet: missing column\(s\) \['feature'\]"):
        read_features(tmp_path / "nocol.parquet")
    pq.write_table(pa.table({"image_id": ["a"], "feature": [[1.0, 2.0]]}), tmp_path / "varlist.parquet")
    with pytest.raises(ValueError, match=r"varlist\.parquet: column 'feature' is list<"):
        read_features(tmp_path / "varlist.parquet")
    (tmp_path / "junk.parquet").write_text("nope")
    with pytest.raises(ValueError, match=r"junk\.parquet: not a readable Parquet"):
        read_features(tmp_path / "junk.parquet")
    with pytest.raises(FileNotFoundError, match=r"absent\.parquet"):
        read_features(tmp_path / "absent.parquet")
