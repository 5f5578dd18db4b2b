"""The Ray engine against the local one, on a real local Ray cluster (one per test session).

- features: the extract_features stage with features.engine=ray writes the same feature file
  (byte for byte) and the same report as with local, on generated images including bad files;
- train: a 2-member ensemble trained as Ray tasks has the weights of the local one, bit for bit;
- evaluate: shards of whole batches give the captions of one process;
- the embedded DAG: `dvc repro` with all three engines = ray after a local run gives the same
  feature-file hash in dvc.lock and the same metrics.

Stage runs join the session's cluster through RAY_ADDRESS, as they would join a real one.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from captioner.config.params import update_params_file

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.xdist_group("ray")  # one xdist worker runs them all: one Ray cluster
THREADS = 2  # TensorFlow threads pinned in both engines; the cluster has 2 CPUs


@pytest.fixture(scope="session")
def ray_address() -> str:
    """A real local Ray cluster with 2 CPUs and no dashboard, shared by the whole session."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def stage_env(address: str | None) -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    if address:
        env["RAY_ADDRESS"] = address
    return env


def run(cmd: list[str], cwd: Path, address: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=stage_env(address), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


# ---------------------------------------------------------------- features


def image_set(root: Path) -> None:
    """A Flickr8k-layout folder: 17 readable images of several formats and sizes, 4 bad files."""
    images = root / "Flicker8k_Dataset"
    images.mkdir(parents=True)
    rng = np.random.default_rng(3)
    names = []
    for i in range(17):
        w, h = int(rng.integers(24, 90)), int(rng.integers(24, 90))
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        if i % 5 == 1:
            img = img.convert("L")
        name = f"img{i:02d}.{'png' if i % 3 == 0 else 'jpg'}"
        img.save(images / name)
        names.append(name)
    (images / "empty.jpg").write_bytes(b"")
    (images / "text.jpg").write_text("not a JPEG\n")
    full = (images / "img00.png").read_bytes()
    (images / "truncated.png").write_bytes(full[: len(full) // 2])
    (images / "random.jpg").write_bytes(rng.bytes(1500))
    names += ["empty.jpg", "text.jpg", "truncated.png", "random.jpg"]
    names.sort()
    (root / "Flickr8k.token.txt").write_text(
        "".join(f"{n}#{k}\ta picture number {i} with some words\n" for i, n in enumerate(names) for k in range(2)))
    (root / "Flickr_8k.trainImages.txt").write_text("\n".join(names[::2]) + "\n")
    (root / "Flickr_8k.devImages.txt").write_text("\n".join(names[1::2]) + "\n")


def feature_project(base: Path, name: str, data_root: Path, engine: str) -> Path:
    project = base / name
    project.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["root"] = str(data_root)
    params["features"].update({"batch_size": 4, "max_bad_images": 0.5, "engine": engine, "threads": THREADS,
                               "workers": 1})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def test_extraction_ray_equals_local_byte_for_byte(tmp_path: Path, ray_address: str) -> None:
    image_set(tmp_path / "images")
    out = {}
    for engine in ("local", "ray"):
        project = feature_project(tmp_path, engine, tmp_path / "images", engine)
        proc = run([sys.executable, str(REPO / "stages/extract_features.py"), "--out", "features/f.parquet"],
                   project, ray_address if engine == "ray" else None)
        out[engine] = {
            "features": (project / "features/f.parquet").read_bytes(),
            "report": json.loads((project / "features/f.report.json").read_text()),
            "skipped": sorted(ln for ln in proc.stderr.splitlines() if ln.startswith("extract_features: skipped")),
            "log": proc.stdout,
        }
    local, ray_ = out["local"], out["ray"]
    assert "engine ray" in ray_["log"] and "engine local" in local["log"]
    assert local["report"]["skipped"] == 4 and local["report"]["extracted"] == 17
    assert {s["image_id"] for s in local["report"]["skipped_images"]} == {"empty", "text", "truncated", "random"}
    assert ray_["report"] == local["report"]
    assert ray_["skipped"] == local["skipped"] and len(local["skipped"]) == 4
    assert ray_["features"] == local["features"]  # the bytes, hence the DVC hash


def test_extraction_ray_resumes_local_shards(tmp_path: Path, ray_address: str) -> None:
    """Shards written by an interrupted run are read back by the ray engine (only the missing
    batches go to the actors), and the file is still the uninterrupted one."""

    image_set(tmp_path / "images")
    paths = sorted(str(p) for p in (tmp_path / "images/Flicker8k_Dataset").iterdir())
    project = feature_project(tmp_path, "p", tmp_path / "images", "ray")
    code = textwrap.dedent(f"""
        import sys
        from captioner.features.backbones import load_backbone
        from captioner.engines.extraction import feature_runner
        from captioner.features.extract import extract
        from captioner.features.store import write_features
        from captioner.runtime.threads import pin_threads
        pin_threads({THREADS})
        paths = {paths!r}
        bb = load_backbone("efficientnet_lite0", "imagenet", "pooled")
        engine, shards = sys.argv[1], sys.argv[2]
        if engine == "partial":  # an interrupted local run: the first 3 of 6 batches only
            extract(paths[:12], bb, 4, 1, False, on_error="skip", shards=shards)
            raise SystemExit(0)
        runner = feature_runner(engine, "efficientnet_lite0", "imagenet", "pooled", {THREADS}, 1, 0)
        r = extract(paths, bb, 4, 1, False, on_error="skip", shards=shards if shards != "-" else None,
                    runner=runner)
        print("RESUMED", r.resumed)
        ids = [str(i) for i in range(len(paths))]
        write_features(sys.argv[3], [i for i, ok in zip(ids, r.ok_mask) if ok], r.features[r.ok_mask],
                       {{"backbone": "efficientnet_lite0"}})
    """)
    shards = tmp_path / "shards"
    run([sys.executable, "-c", code, "partial", str(shards)], project)
    assert len(list(shards.glob("batch-*.parquet"))) == 3
    resumed = run([sys.executable, "-c", code, "ray", str(shards), str(tmp_path / "resumed.parquet")], project,
                  ray_address)
    assert "RESUMED 12" in resumed.stdout
    run([sys.executable, "-c", code, "local", "-", str(tmp_path / "whole.parquet")], project)
    assert (tmp_path / "resumed.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()


# ---------------------------------------------------------------- train


def toy_data():
    from captioner.training.fit import TrainData

    rng = np.random.default_rng(5)
    n, width, vocab, dim = 96, 9, 10, 6
    lengths = rng.integers(3, width + 1, n)
    ids = np.zeros((n, width), np.int32)
    for i, length in enumerate(lengths):
        ids[i, :length] = rng.integers(1, vocab, length)
    feats = rng.standard_normal((n, dim)).astype(np.float32)
    return TrainData(ids[:72], np.arange(72), ids[72:], np.arange(72, 96), feats), vocab, dim


def toy_jobs(vocab: int, dim: int):
    from captioner.model.build import build_merge_model
    from captioner.training.fit import MemberJob

    build = functools.partial(build_merge_model, vocab, dim, 8, 8, 0.2)  # dropout on: seeds matter
    return [MemberJob(member=m, seed=11 + m, build=build, batch_size=16, bucket_width=2, epochs=2, patience=2,
                      learning_rate=0.01) for m in range(2)]


LOCAL_ENSEMBLE = textwrap.dedent(f"""
    import sys
    import numpy as np
    from tests.system.test_ray import toy_data, toy_jobs
    from captioner.engines.ensemble import train_members
    data, vocab, dim = toy_data()
    trained = train_members("local", toy_jobs(vocab, dim), data, {THREADS}, verbose=0)
    for m, (model, result) in enumerate(trained):
        np.savez(f"{{sys.argv[1]}}/local{{m}}.npz", *model.get_weights(), loss=np.array(result.history["loss"]))
""")


def test_ensemble_ray_equals_local(tmp_path: Path, ray_address: str) -> None:
    from captioner.training.fit import CurveLogger
    from captioner.engines.ensemble import train_members

    run([sys.executable, "-c", LOCAL_ENSEMBLE, str(tmp_path)], REPO)  # fresh process: pinned threads
    data, vocab, dim = toy_data()
    trained = train_members("ray", toy_jobs(vocab, dim), data, THREADS,
                            lambda: [CurveLogger(tmp_path / "curves")], verbose=0)
    assert len(trained) == 2
    for m, (model, result) in enumerate(trained):
        local = np.load(tmp_path / f"local{m}.npz")
        weights = model.get_weights()
        assert len(weights) == len(local.files) - 1
        for i, w in enumerate(weights):
            np.testing.assert_array_equal(w, local[f"arr_{i}"], err_msg=f"member {m} weight {i}")
        np.testing.assert_array_equal(result.history["loss"], local["loss"])
    # the members differ (own seeds), and member 0's curves were written from its epochs
    assert not np.array_equal(trained[0][0].get_weights()[0], trained[1][0].get_weights()[0])
    lines = (tmp_path / "curves/loss.tsv").read_text().splitlines()
    assert lines[0] == "epoch\ttrain\tvalidation" and len(lines) == 3
    assert float(lines[1].split("\t")[1]) == pytest.approx(trained[0][1].history["loss"][0], rel=1e-5)


# ---------------------------------------------------------------- evaluate


def test_evaluate_ray_shards_caption_like_one_process(tmp_path: Path, toy: dict, ray_address: str) -> None:
    """The toy colour model writes a different caption per colour: shards decoded by Ray tasks,
    put back together, give every image its own caption and score, as one process does."""
    from captioner.config.decoding import DecodingConfig
    from captioner.engines.captioning import decode_captions
    from captioner.runtime.io import write_json
    from captioner.datasets.text import save_vocabulary

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    toy["model"].save(model_dir / "model.keras")
    save_vocabulary(model_dir / "vocab.json", toy["vocab"])
    write_json(model_dir / "meta.json", {"members": ["model.keras"], "kind": "merge"})
    feats = toy["feats"][:40]
    decode = DecodingConfig(beam_width=2, max_length=8)
    local = decode_captions("local", model_dir, feats, THREADS, 0, 6, decode)
    ray_ = decode_captions("ray", model_dir, feats, THREADS, 3, 6, decode)
    words = [c.words for c in local]
    assert len({" ".join(w) for w in words}) >= 3  # captions differ between images: order matters
    assert [c.words for c in ray_] == words
    np.testing.assert_allclose([c.logprob for c in ray_], [c.logprob for c in local], rtol=1e-5)


def test_decoding_shards_hold_whole_batches() -> None:
    from captioner.engines.ray_decode import shard_bounds

    assert shard_bounds(10, 4, 2) == [(0, 8), (8, 10)]
    assert shard_bounds(10, 4, 5) == [(0, 4), (4, 8), (8, 10)]  # never more shards than batches
    assert shard_bounds(24, 8, 2) == [(0, 16), (16, 24)]
    bounds = shard_bounds(1000, 32, 7)
    assert bounds[0][0] == 0 and bounds[-1][1] == 1000
    assert all(a % 32 == 0 and b2 == a for (_, b2), (a, _) in zip(bounds, bounds[1:]))


# ---------------------------------------------------------------- the DAG


def test_dvc_repro_with_ray_engines_matches_local(workspace, tmp_path: Path, ray_address: str) -> None:
    """The reproduced tiny workspace with a 2-member ensemble, then every engine switched to Ray:
    the same feature file, metrics and captions."""
    from tests.helpers.project import ran_stages
    from tests.helpers.workspace import clone_workspace

    project = clone_workspace(workspace, tmp_path / "proj")
    update_params_file(project / "params.yaml", {"train": {"ensemble": 2}})
    run(["dvc", "repro"], project)

    def lock_outs(stage: str) -> dict[str, str]:
        lock = yaml.safe_load((project / "dvc.lock").read_text())
        return {o["path"]: o["md5"] for o in lock["stages"][stage]["outs"]}

    local_features = lock_outs("extract_features")
    local_metrics = json.loads((project / "metrics/eval.json").read_text())
    import pandas as pd

    local_captions = pd.read_parquet(project / "data/eval/captions.parquet")
    local_model = project / "data/model"
    local_weights = {f.name: f.read_bytes() for f in local_model.glob("*.keras")}
    assert len(local_weights) == 2

    update_params_file(project / "params.yaml", {"features": {"engine": "ray"}, "train": {"engine": "ray"},
                                                 "evaluate": {"engine": "ray", "shards": 2}})
    out = run(["dvc", "repro"], project, ray_address).stdout
    assert {"extract_features", "train", "evaluate"} <= ran_stages(out)
    run_info = json.loads((project / "metrics/eval_run.json").read_text())
    assert run_info["engine"] == "ray"
    assert lock_outs("extract_features") == local_features  # same file hash: the cache is shared
    assert json.loads((project / "metrics/eval.json").read_text()) == local_metrics
    import pandas as pd

    assert pd.read_parquet(project / "data/eval/captions.parquet").equals(local_captions)


RETRY_ENSEMBLE = textwrap.dedent(f"""
    import dataclasses, json, os, sys
    import numpy as np
    import ray
    from tests.system.test_ray import toy_data, toy_jobs
    from captioner.engines.ensemble import train_members
    from captioner.training.checkpoint import CheckpointFolder
    out, engine = sys.argv[1], sys.argv[2]
    if engine == "ray":  # the workers get the fault hook through the job's environment
        hook = {{k: os.environ[k] for k in os.environ if k.startswith("CAPTIONER_FAULT") or k == "PYTHONPATH"}}
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env={{"env_vars": hook}}, log_to_driver=False)
    folder = CheckpointFolder.open(f"{{out}}/{{engine}}.partial", "train", {{"toy": 1}})
    data, vocab, dim = toy_data()
    jobs = [dataclasses.replace(j, epochs=6, patience=6, checkpoints=str(folder.root)) for j in toy_jobs(vocab, dim)]
    trained = train_members(engine, jobs, data, {THREADS}, verbose=0)
    for m, (model, result) in enumerate(trained):
        np.savez(f"{{out}}/{{engine}}{{m}}.npz", *model.get_weights(), loss=np.array(result.history["loss"]))
""")


def test_a_killed_ray_member_task_is_retried_from_its_checkpoint(tmp_path: Path, ray_address: str) -> None:
    """SIGKILL the Ray worker training member 0 while it writes its 3rd epoch's checkpoint: Ray
    retries the task, the retry resumes at epoch 3 (it writes 4 epoch checkpoints and the final
    one, not 7), and both members end with the local engine's weights, bit for bit."""
    import signal

    from tests.helpers.faults import pause_env, paused_pid, renames

    run([sys.executable, "-c", RETRY_ENSEMBLE, str(tmp_path), "local"], REPO)
    env, mark = pause_env(tmp_path, r"ray\.partial/member-0\.npz$", 3)
    env = {**stage_env(ray_address), **{k: v for k, v in env.items() if k.startswith("CAPTIONER_FAULT")},
           "PYTHONPATH": f"{env['PYTHONPATH']}{os.pathsep}{REPO}"}
    driver = subprocess.Popen([sys.executable, "-c", RETRY_ENSEMBLE, str(tmp_path), "ray"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = paused_pid(mark, driver, "the Ray worker of member 0")
    os.kill(killed, signal.SIGKILL)
    out, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, out[-3000:]
    pids = renames(mark)
    assert pids[:3] == [killed] * 3  # epochs 1 and 2 written, the 3rd paused and killed
    retry = pids[3:]
    assert len(set(retry)) == 1 and retry[0] != killed and len(retry) == 4 + 1, pids
    for m in range(2):
        local, ray_ = np.load(tmp_path / f"local{m}.npz"), np.load(tmp_path / f"ray{m}.npz")
        assert local.files == ray_.files
        for name in local.files:
            np.testing.assert_array_equal(ray_[name], local[name], err_msg=f"member {m} {name}")
