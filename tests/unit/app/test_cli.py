"""`captioner caption`: inputs (files, folders, globs), --json, decoding.json and its overrides,
and errors that say what is wrong (before TensorFlow loads when they can)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from captioner import __version__
from captioner.app.cli import expand_inputs, main
from captioner.runtime.io import write_json
from captioner.config.decoding import DecodingConfig
from captioner.model.folder import default_model_dir, write_decoding
from captioner.model.build import build_merge_model
from captioner.datasets.text import build_vocabulary, save_vocabulary
from tests.helpers.models import CAPTIONS, EVALUATED, evaluate_like_the_pipeline, trained_tiny_model

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A small untrained captioner over EfficientNet-Lite0 with random weights ("none"): fast, 1280-d."""
    out = tmp_path_factory.mktemp("model")
    vocab = build_vocabulary(CAPTIONS, 1)
    build_merge_model(len(vocab), 1280, 8, 8, 0.0).save(out / "model.keras")
    save_vocabulary(out / "vocab.json", vocab)
    write_json(out / "meta.json", {"backbone": "efficientnet_lite0", "weights": "none",
                                   "feature_dim": 1280, "vocab_size": len(vocab)})
    return out


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """photos/{a.png, trip/b.JPG, trip/c.webp, broken.jpg (not an image), notes.txt}."""
    root = tmp_path / "photos"
    (root / "trip").mkdir(parents=True)
    Image.new("RGB", (80, 60), (200, 30, 30)).save(root / "a.png")
    Image.new("RGB", (50, 90), (30, 30, 200)).save(root / "trip" / "b.JPG", "JPEG")
    Image.new("RGB", (64, 64), (30, 200, 30)).save(root / "trip" / "c.webp", "WEBP")
    (root / "broken.jpg").write_bytes(b"this is not a JPEG")
    (root / "notes.txt").write_text("not an image")
    return root


def test_expand_inputs_files_folders_globs(photos: Path) -> None:
    paths, unmatched = expand_inputs([
        str(photos / "trip"), str(photos / "*.png"), str(photos / "trip" / "b.JPG"),  # b.JPG twice: kept once
        str(photos / "notes.txt"), str(photos / "**" / "*.webp"), str(photos / "none*.png"), "missing.jpg",
    ])
    names = [p.relative_to(photos).as_posix() for p in paths]
    assert names == ["trip/b.JPG", "trip/c.webp", "a.png", "notes.txt"]  # an explicit file is always tried
    assert unmatched == [str(photos / "none*.png"), "missing.jpg"]
    every, _ = expand_inputs([str(photos)])
    assert [p.name for p in every] == ["a.png", "broken.jpg", "b.JPG", "c.webp"]  # folders: images only, recursive


def test_folders_skip_hidden_files_and_folders_and_the_given_ones(photos: Path) -> None:
    (photos / ".thumbnails").mkdir()
    Image.new("RGB", (8, 8)).save(photos / ".thumbnails" / "a.png")
    Image.new("RGB", (8, 8)).save(photos / "trip" / "._b.jpg", "JPEG")  # macOS resource fork
    (photos / "maps").mkdir()
    Image.new("RGB", (8, 8)).save(photos / "maps" / "a.attention.png")
    paths, unmatched = expand_inputs([str(photos)], skip=[photos / "maps"])
    assert [p.relative_to(photos).as_posix() for p in paths] == ["a.png", "broken.jpg", "trip/b.JPG", "trip/c.webp"]
    assert unmatched == []
    named, _ = expand_inputs([str(photos / "trip" / "._b.jpg"), str(photos / "maps")], skip=[photos / "maps"])
    assert [p.name for p in named] == ["._b.jpg", "a.attention.png"]  # named explicitly: kept


def test_missing_path_pattern_and_empty_folder_are_reported_apart(model_dir: Path, photos: Path, capsys) -> None:
    (photos / "empty").mkdir()
    missing = photos / "trip" / "d.jpg"
    code = main(["caption", str(missing), str(photos / "a.png"), str(photos / "*.gif"), str(photos / "empty"),
                 "--model", str(model_dir), "--beam", "1", "--max-length", "4"])
    out, err = capsys.readouterr()
    assert code == 1  # some inputs failed...
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(photos / "a.png")]  # ...the others were captioned
    assert f"captioner: {missing}: no such file or folder\n" in err
    assert f"captioner: {photos / '*.gif'}: no image matches this pattern\n" in err
    assert f"captioner: {photos / 'empty'}: no images in this folder\n" in err


def test_missing_model_is_a_clear_error(photos: Path, tmp_path: Path, capsys) -> None:
    assert main(["caption", str(photos / "a.png"), "--model", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert f"no trained model at {tmp_path / 'nowhere'}" in err and "model.keras" in err and "make repro" in err


def test_bad_beam_is_a_usage_error(photos: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["caption", str(photos), "--beam", "0"])
    assert exc.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_json_lines_and_unreadable_images_reported_per_file(model_dir: Path, photos: Path, capsys) -> None:
    code = main(["caption", str(photos), str(photos / "nothing*.png"), "--model", str(model_dir),
                 "--json", "--beam", "2", "--max-length", "6"])
    out, err = capsys.readouterr()
    assert code == 1  # some inputs failed, the others were captioned
    captions = [json.loads(line) for line in out.splitlines()]  # stdout: captions only, JSON lines
    assert [Path(r["image"]).name for r in captions] == ["a.png", "b.JPG", "c.webp"]
    for r in captions:
        assert set(r) == {"image", "caption", "score"} and isinstance(r["caption"], str)
        assert len(r["caption"].split()) <= 6 and r["score"] <= 0.0
    errors = [json.loads(line) for line in err.splitlines()]  # stderr: the service's problem shape
    assert errors == [
        {"type": "urn:captioner:problem:no_match", "title": "No such file or pattern", "status": 404,
         "detail": "no image matches this pattern", "image": str(photos / "nothing*.png")},
        {"type": "urn:captioner:problem:undecodable", "title": "Image cannot be decoded", "status": 422,
         "detail": "not a recognised image format", "image": str(photos / "broken.jpg")},
    ]


def test_json_fatal_error_is_a_json_line(photos: Path, tmp_path: Path, capsys) -> None:
    assert main(["caption", str(photos / "a.png"), "--model", str(tmp_path / "nowhere"), "--json"]) == 2
    out, err = capsys.readouterr()
    (row,) = [json.loads(line) for line in err.splitlines()]
    assert out == "" and row["image"] is None and "no trained model at" in row["detail"]
    assert row["type"] == "urn:captioner:problem:bad_model" and row["status"] == 500


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"captioner {__version__}"


def test_input_errors_come_before_tensorflow_loads(photos: Path, tmp_path: Path) -> None:
    """An empty folder (or a missing model) is reported without importing TensorFlow: instantly."""
    (photos / "empty").mkdir()
    code = ("import sys; from captioner.app.cli import main; rc = main(sys.argv[1:]); "
            "print('TF', 'tensorflow' in sys.modules); sys.exit(rc)")
    for extra, message in (([str(photos / "empty")], "no images in this folder"),
                           ([str(photos / "a.png"), "--model", str(tmp_path / "none")], "no trained model at")):
        proc = subprocess.run([sys.executable, "-c", code, "caption", *extra], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert "no such file" not in proc.stderr
        assert proc.stdout.strip() == "TF False"


def test_model_folder_default_env_then_release_then_model(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CAPTIONER_MODEL", raising=False)
    assert default_model_dir() == "data/model"
    (tmp_path / "data" / "release").mkdir(parents=True)
    assert default_model_dir() == "data/release"
    monkeypatch.setenv("CAPTIONER_MODEL", "/models/mine")
    assert default_model_dir() == "/models/mine"


def test_captioner_model_env_is_the_default_model(model_dir: Path, photos: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CAPTIONER_MODEL", str(model_dir))
    assert main(["caption", str(photos / "a.png"), "--max-length", "3"]) == 0
    assert capsys.readouterr().out.startswith(f"{photos / 'a.png'}\t")


def test_bad_decoding_json_is_a_clear_error(model_dir: Path, photos: Path, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    (other / "decoding.json").write_text('{"beam_width": 0, "max_length": 5}')
    assert main(["caption", str(photos / "a.png"), "--model", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"{other / 'decoding.json'}: beam_width: Input should be greater than or equal to 1" in err


def test_plain_output_for_a_glob(model_dir: Path, photos: Path, capsys) -> None:
    assert main(["caption", str(photos / "trip" / "*"), "--model", str(model_dir), "--beam", "1", "--max-length", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(photos / "trip" / "b.JPG"), str(photos / "trip" / "c.webp")]


def test_vocabulary_model_mismatch_is_a_clear_error(model_dir: Path, photos: Path, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    save_vocabulary(other / "vocab.json", build_vocabulary([*CAPTIONS, "startseq three new words endseq"], 1))
    assert main(["caption", str(photos / "a.png"), "--model", str(other)]) == 2
    err = capsys.readouterr().err
    assert "the model predicts" in err and "vocabulary has" in err and "another vocabulary" in err


def test_feature_dim_mismatch_is_a_clear_error(model_dir: Path, photos: Path, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    write_json(other / "meta.json", {"backbone": "vgg16", "weights": "none", "feature_dim": 1280})
    assert main(["caption", str(photos / "a.png"), "--model", str(other)]) == 2
    err = capsys.readouterr().err
    assert "expects 1280-d features but backbone vgg16 gives 4096-d" in err


def test_console_script(photos: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "captioner"
    if not exe.exists():
        pytest.skip(f"{exe}: console script not installed (pip install -e .)")
    proc = subprocess.run([str(exe), "caption", str(photos / "a.png"), "--model", str(tmp_path / "none")],
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 2 and "no trained model at" in proc.stderr


@pytest.fixture(scope="module")
def attention_dir(tmp_path_factory) -> Path:
    """A small untrained attention captioner over the 7x7x1280 Lite0 grid (random weights)."""
    from captioner.model.build import build_attention_model

    out = tmp_path_factory.mktemp("attention")
    vocab = build_vocabulary(CAPTIONS, 1)
    build_attention_model(len(vocab), 49, 1280, 8, 8, 8, 0.0, 1.0).save(out / "model.keras")
    save_vocabulary(out / "vocab.json", vocab)
    write_json(out / "meta.json", {"backbone": "efficientnet_lite0", "weights": "none", "spatial": "grid",
                                   "feature_dim": 49 * 1280, "vocab_size": len(vocab), "kind": "attention"})
    return out


def test_attention_map_sheets(attention_dir: Path, photos: Path, tmp_path: Path, capsys) -> None:
    maps = tmp_path / "maps"
    code = main(["caption", str(photos / "a.png"), str(photos / "trip"), "--model", str(attention_dir),
                 "--max-length", "4", "--json", "--attention-map", str(maps)])
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["attention_map"]).name for r in rows] == ["a.attention.png", "b.attention.png", "c.attention.png"]
    for r in rows:
        sheet = Image.open(r["attention_map"])
        n = len(r["caption"].split())
        assert sheet.size == (min(max(n, 1), 5) * 160, -(-max(n, 1) // 5) * 182)


def test_attention_map_of_a_merge_model_is_a_clear_error(model_dir: Path, photos: Path, tmp_path: Path,
                                                        capsys) -> None:
    code = main(["caption", str(photos / "a.png"), "--model", str(model_dir), "--attention-map", str(tmp_path)])
    assert code == 2
    assert "merge model has no attention" in capsys.readouterr().err


def test_attention_maps_inside_the_input_folder_are_not_captioned_next_time(
    attention_dir: Path, photos: Path, capsys
) -> None:
    trip, maps = photos / "trip", photos / "trip" / "maps"
    for _ in range(2):
        assert main(["caption", str(trip), "--model", str(attention_dir), "--max-length", "3",
                     "--attention-map", str(maps)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [Path(line.split("\t")[0]).name for line in lines] == ["b.JPG", "c.webp"]
    assert sorted(p.name for p in maps.iterdir()) == ["b.attention.png", "c.attention.png"]


def test_an_attention_map_that_cannot_be_written_fails_the_run_not_the_others(
    attention_dir: Path, photos: Path, tmp_path: Path, capsys
) -> None:
    blocker = tmp_path / "maps"
    blocker.write_text("a file where the maps folder should go")
    code = main(["caption", str(photos / "trip"), "--model", str(attention_dir), "--max-length", "3",
                 "--json", "--attention-map", str(blocker)])
    out, err = capsys.readouterr()
    assert code == 1
    captions = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["image"]).name for r in captions] == ["b.JPG", "c.webp"]
    assert all("attention_map" not in r for r in captions)
    errors = [json.loads(line) for line in err.splitlines()]
    assert len(errors) == 2 and all(e["detail"].startswith("cannot write the attention map (") for e in errors)
    assert {e["type"] for e in errors} == {"urn:captioner:problem:write_failed"}


# ---------------------------------------------------------------- a trained tiny model, decoded like `evaluate`

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict[Path, str]]:
    return trained_tiny_model(tmp_path_factory.getbasetemp())


def test_cli_prints_the_captions_the_evaluation_produced(tiny, tmp_path: Path, capsys) -> None:
    """decoding.json holds the evaluation's settings; the CLI must decode with them by default."""
    model, photos = tiny
    images = sorted(photos)
    release = tmp_path / "release"
    shutil.copytree(model, release)
    write_decoding(release, EVALUATED)
    expected = evaluate_like_the_pipeline(release, images, EVALUATED)
    # The model learnt its task, and max_length 4 cut the 5-word captions: the settings matter.
    assert sum(e == " ".join(photos[p].split()[:4]) for e, p in zip(expected, images)) >= 0.75 * len(images)
    assert main(["caption", *map(str, images), "--model", str(release), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == list(map(str, images))
    assert [r["caption"] for r in rows] == expected
    # Flags override single settings of decoding.json.
    assert main(["caption", *map(str, images[:4]), "--model", str(release), "--max-length", "2", "--beam", "1"]) == 0
    assert [len(line.split("\t")[1].split()) for line in capsys.readouterr().out.splitlines()] == [2] * 4
    # Without decoding.json: the evaluate defaults (greedy, 40 words), whole captions.
    some = images[::3]
    assert main(["caption", *map(str, some), "--model", str(model)]) == 0
    got = [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()]
    assert got == evaluate_like_the_pipeline(model, some, DecodingConfig())


def test_a_scenes_model_warns_once_on_other_images(model_dir: Path, photos: Path, tmp_path: Path, capsys) -> None:
    """A model trained on the generated scenes (meta.json "dataset": "scenes") says once that its
    captions of real photos mean little; on scene images it says nothing."""
    scenes_model = tmp_path / "scenes-model"
    shutil.copytree(model_dir, scenes_model)
    meta = json.loads((scenes_model / "meta.json").read_text())
    write_json(scenes_model / "meta.json", {**meta, "dataset": "scenes"})
    args = ["--model", str(scenes_model), "--beam", "1", "--max-length", "3"]
    assert main(["caption", str(photos / "trip"), *args]) == 0
    err = capsys.readouterr().err
    assert err.count("trained on the generated scenes") == 1, err
    scenes = tmp_path / "scenes"
    (scenes / "Flicker8k_Dataset").mkdir(parents=True)
    (scenes / "README.md").write_text("# Generated scenes data set\n\n...")
    Image.new("RGB", (64, 64), (200, 30, 30)).save(scenes / "Flicker8k_Dataset" / "s1.jpg", "JPEG")
    assert main(["caption", str(scenes / "Flicker8k_Dataset"), *args]) == 0
    assert "generated scenes" not in capsys.readouterr().err
    assert main(["caption", str(photos / "trip"), "--model", str(model_dir), "--beam", "1", "--max-length", "3"]) == 0
    assert "generated scenes" not in capsys.readouterr().err  # no dataset in meta.json: no warning
