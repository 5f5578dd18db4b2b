"""Smoke test: every benchmark script runs in --quick mode on a tiny generated data set and
writes its JSON part; run_all merges the parts into one file with the headline keys.

The scripts run in this process (one TensorFlow import); the incremental-rerun benchmark runs
`dvc repro` twice (like tests/test_pipeline.py) and is skipped unless BENCH_REPRO_TEST=1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks import extract, inference, report, repro, run_all, scaling, train_vs_seed
from captioner.datasets.scenes import generate_scenes


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    generate_scenes(root / "scenes", n_images=40, image_size=64, seed=1, progress=False)
    return root


def args(root: Path, name: str, *extra: str) -> list[str]:
    return ["--quick", "--data", str(root / "scenes"), "--out", str(root / "parts" / f"{name}.json"),
            "--cache", str(root / "cache"), "--weights", "none", *extra]


@pytest.mark.slow
def test_quick_benchmarks_write_their_parts_and_merge(bench_dir: Path) -> None:
    parts = {
        "scaling": scaling.main(args(bench_dir, "scaling", "--plot", str(bench_dir / "scaling.png"))),
        "extract": extract.main(args(bench_dir, "extract")),
        "train_vs_seed": train_vs_seed.main(args(bench_dir, "train_vs_seed")),
        "inference": inference.main(args(bench_dir, "inference")),
    }
    for name, part in parts.items():
        assert json.loads((bench_dir / "parts" / f"{name}.json").read_text())["summary"] == part["summary"]
    assert (bench_dir / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    s = parts["extract"]["summary"]
    assert s["extract_images_per_s"] > 0 and 0 < s["extract_fraction_of_raw"] < 2
    assert s["extract_vgg16_images_per_s"] > 0
    s = parts["train_vs_seed"]["summary"]
    assert s["train_words_per_s"] > 0 and s["seed_train_words_per_s"] > 0
    assert 0 < s["train_peak_rss_gb"] < 64
    assert len(parts["train_vs_seed"]["ours"]["dev_nll"]) == len(parts["train_vs_seed"]["seed"]["dev_nll"])
    s = parts["inference"]["summary"]
    assert s["greedy_ms_per_image"] > 0 and s["beam3_ms_per_image"] > 0 and s["eval_1000_beam3_s"] > 0
    assert len(parts["scaling"]["summary"]["scaling_extract_s"]) == 3

    out = bench_dir / "bench.json"
    merged = run_all.merge_parts(out, bench_dir / "parts", list(parts), {}, True, str(bench_dir / "scenes"))
    run_all.write_bench(out, merged)
    written = json.loads(out.read_text())
    assert set(run_all.REQUIRED) - written.keys() == {"repro_full_s", "repro_train_change_s"}
    assert set(written["parts"]) == set(parts)
    table = report.render(written)
    assert "`extract_fraction_of_raw`" in table and "Quick run" in table


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("BENCH_REPRO_TEST") != "1",
                    reason="runs the DAG twice (~30-60 s, as tests/test_pipeline.py does); set BENCH_REPRO_TEST=1")
def test_quick_repro_benchmark(bench_dir: Path) -> None:
    part = repro.main(args(bench_dir, "repro"))
    s = part["summary"]
    assert s["repro_train_change_s"] > 0 and s["repro_full_s"] > 0
    assert set(part["train_change"]["stages"]) == {"train", "evaluate"}
