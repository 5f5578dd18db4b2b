"""Smoke test: every benchmark script runs in --quick mode on a tiny generated data set and
writes its JSON part; run_all merges the parts into one file with the headline keys.

The scripts run in this process (one TensorFlow import); the incremental-rerun benchmark runs
`dvc repro` twice. Each part's headline figures are checked against the part's own measurements
(a ratio against its two terms, a rate against the work it counts), not only for being positive.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import extract, inference, precision, report, repro, run_all, scaling, stream, train_vs_seed
from captioner.datasets.scenes import generate_scenes


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    generate_scenes(root / "scenes", n_images=40, image_size=64, seed=1, progress=False)
    return root


def args(root: Path, name: str, *extra: str) -> list[str]:
    return ["--quick", "--data", str(root / "scenes"), "--out", str(root / "parts" / f"{name}.json"),
            "--cache", str(root / "cache"), "--weights", "none", *extra]


def test_quick_benchmarks_write_their_parts_and_merge(bench_dir: Path) -> None:
    parts = {
        "scaling": scaling.main(args(bench_dir, "scaling", "--plot", str(bench_dir / "scaling.png"))),
        "extract": extract.main(args(bench_dir, "extract")),
        "train_vs_seed": train_vs_seed.main(args(bench_dir, "train_vs_seed")),
        "inference": inference.main(args(bench_dir, "inference")),
        "stream": stream.main(args(bench_dir, "stream")),
    }
    for name, part in parts.items():
        assert json.loads((bench_dir / "parts" / f"{name}.json").read_text())["summary"] == part["summary"]
    assert (bench_dir / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    s, lite = parts["extract"]["summary"], parts["extract"]["efficientnet_lite0"]
    assert s["extract_images_per_s"] == lite["disk_images_per_s"] > 0
    assert s["extract_raw_images_per_s"] == lite["raw_images_per_s"] > 0
    # the median of per-repeat ratios stays near the ratio of the median rates
    assert s["extract_fraction_of_raw"] == pytest.approx(s["extract_images_per_s"] / s["extract_raw_images_per_s"],
                                                         rel=0.5)
    assert s["extract_vgg16_images_per_s"] == parts["extract"]["vgg16"]["disk_images_per_s"] > 0
    s = parts["train_vs_seed"]["summary"]
    assert s["train_speedup_vs_seed"] == pytest.approx(s["train_words_per_s"] / s["seed_train_words_per_s"], rel=0.01)
    assert 0.1 < s["train_peak_rss_gb"] < 64  # TensorFlow alone holds more than 100 MB
    assert len(parts["train_vs_seed"]["ours"]["dev_nll"]) == len(parts["train_vs_seed"]["seed"]["dev_nll"])
    s = parts["inference"]["summary"]
    assert s["greedy_ms_per_image"] > 0 and s["beam3_ms_per_image"] > 0 and s["eval_1000_beam3_s"] > 0
    assert len(parts["scaling"]["summary"]["scaling_extract_s"]) == 3
    s, data = parts["stream"]["summary"], parts["stream"]["data"]
    assert s["stream_vs_memory_words_per_s"] == pytest.approx(s["stream_words_per_s"] / s["memory_words_per_s"],
                                                              rel=0.01)
    assert data["windows"] > 1  # the streamed side really crossed windows
    assert data["windows"] == -(-data["row_groups"] // data["groups_per_window"])

    out = bench_dir / "bench.json"
    merged = run_all.merge_parts(out, bench_dir / "parts", list(parts), {}, True, str(bench_dir / "scenes"))
    run_all.write_bench(out, merged)
    written = json.loads(out.read_text())
    assert set(run_all.REQUIRED) - written.keys() == {"repro_full_s", "repro_train_change_s"}
    assert set(written["parts"]) == set(parts)
    table = report.render(written)
    assert "`extract_fraction_of_raw`" in table and "Quick run" in table


def test_quick_repro_benchmark(bench_dir: Path) -> None:
    part = repro.main(args(bench_dir, "repro"))
    s = part["summary"]
    assert s["repro_train_change_s"] > 0 and s["repro_full_s"] > 0
    assert set(part["train_change"]["stages"]) == {"train", "scst", "evaluate"}


def test_quick_coco_scale_writes_its_keys_and_a_grid_feature_file(bench_dir: Path) -> None:
    """`coco_scale.py --quick`: a 200-image synthetic Karpathy COCO set through the stages (each
    its own process); the six coco_* keys are there and the feature file is a float16 grid
    file of exactly the image ids clean_text produced (kept with --keep)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks import coco_scale

    work = bench_dir / "coco_scale"
    part = coco_scale.main(args(bench_dir, "coco_scale", "--work", str(work), "--keep"))
    s = part["summary"]
    for key in ("coco_feature_file_gb", "coco_train_peak_rss_gb", "coco_train_words_per_s",
                "coco_eval_peak_rss_gb", "coco_eval_5000_beam3_s", "coco_text_peak_rss_gb"):
        assert s[key] > 0, key
    assert s["coco_images"] == 200 and s["coco_vocab_size"] > 1
    assert json.loads((bench_dir / "parts" / "coco_scale.json").read_text())["summary"] == s

    path = work / "coco" / "data" / "features" / "efficientnet_lite0.parquet"
    f = pq.ParquetFile(path)
    assert f.schema_arrow.field("image_id").type == pa.string()
    assert f.schema_arrow.field("feature").type == pa.list_(pa.float16(), 49 * 1280)
    meta = {k.decode(): v.decode() for k, v in f.schema_arrow.metadata.items()}
    assert {k: meta[k] for k in ("backbone", "spatial", "regions", "channels", "feature_dim")} == {
        "backbone": "efficientnet_lite0", "spatial": "grid", "regions": "49", "channels": "1280",
        "feature_dim": str(49 * 1280)}
    images = pd.read_parquet(work / "coco" / "data" / "text" / "images.parquet")
    ids = pq.read_table(path, columns=["image_id"]).column("image_id").to_pylist()
    assert sorted(ids) == sorted(images["image_id"]) and len(ids) == 200
    assert all(i.startswith(("COCO_train2014_", "COCO_val2014_")) for i in ids)
    assert json.loads((work / "coco" / "raw" / "dataset_coco.json").read_text())["images"][0]["sentences"]


def test_precision_benchmark_times_each_precision_on_a_projects_features(workspace, tmp_path: Path) -> None:
    """benchmarks/precision.py on the reproduced tiny workspace (read only): one row per precision,
    the full epoch extrapolated from the timed batches, and bfloat16 really used (same seed and
    batches, so only the arithmetic differs: close losses, not equal ones)."""
    rows = precision.main(["--project", str(workspace.path), "--batches", "2", "--json", str(tmp_path / "p.json")])
    assert [(r["kind"], r["precision"]) for r in rows] == [("merge", "float32"), ("merge", "mixed_bfloat16")]
    for r in rows:
        assert r["batches_timed"] == 2 and r["s_per_batch"] > 0
        assert r["epoch_s"] >= r["s_per_batch"] * 2 * 0.99  # the tiny epoch has more than 2 batches
    f32, bf16 = rows
    assert bf16["train_loss"] != f32["train_loss"] and abs(bf16["train_loss"] - f32["train_loss"]) < 0.2
    assert bf16["speedup_vs_float32"] == pytest.approx(f32["s_per_batch"] / bf16["s_per_batch"], rel=0.02)
    assert json.loads((tmp_path / "p.json").read_text())["rows"] == rows
    with pytest.raises(SystemExit):  # pooled features: no attention member
        precision.main(["--project", str(workspace.path), "--kinds", "attention"])
