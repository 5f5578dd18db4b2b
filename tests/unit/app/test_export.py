"""`captioner export`: a SavedModel loaded in a fresh process that cannot import captioner gives
the CLI's captions from image bytes, decoded as the model folder's decoding.json says."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from captioner.app.cli import main
from tests.helpers.models import trained_tiny_model

LOADER = r'''
import importlib.abc, json, sys

class NoCaptioner(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "captioner" or name.startswith("captioner."):
            raise ImportError(f"{name} is blocked: the export must stand alone")
        return None

sys.meta_path.insert(0, NoCaptioner())
import tensorflow as tf

m = tf.saved_model.load(sys.argv[1])
files = sys.argv[2:]
out = m.caption(tf.constant([open(f, "rb").read() for f in files]))
print(json.dumps({"captions": [c.decode() for c in out["caption"].numpy()],
                  "scores": [float(s) for s in out["score"].numpy()],
                  "captioner_loaded": any(k.startswith("captioner") for k in sys.modules)}))
'''


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, dict[Path, str], Path]:
    tiny, photos = trained_tiny_model(tmp_path_factory.getbasetemp())
    model = tmp_path_factory.mktemp("beam-model") / "model"
    shutil.copytree(tiny, model)
    recorded = {"beam_width": 3, "length_penalty": 1.1, "block_repeat_ngram": 2, "max_length": 6}
    (model / "decoding.json").write_text(json.dumps(recorded))
    out = tmp_path_factory.mktemp("export") / "saved"
    assert main(["export", "--model", str(model), str(out)]) == 0
    return model, photos, out


def test_export_in_a_fresh_process_gives_the_cli_captions(exported, capsys) -> None:
    model, photos, out = exported
    images = [p for i, p in enumerate(sorted(photos)) if i % 3 == 1][:6]  # JPEG and PNG
    assert main(["caption", *map(str, images), "--model", str(model), "--json"]) == 0  # decoding.json's
    cli = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    proc = subprocess.run([sys.executable, "-I", "-c", LOADER, str(out), *map(str, images)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["captioner_loaded"] is False
    assert got["captions"] == [r["caption"] for r in cli]
    # Whole sentences (max_length 6 leaves room for "a red square on grey"), and a model that learnt:
    # the exact hit rate depends on the CPU's float paths (one of six differed on CI's machine).
    assert set(got["captions"]) <= set(photos.values())
    assert sum(c == photos[p] for c, p in zip(got["captions"], images)) >= 4
    assert got["scores"] == pytest.approx([r["score"] for r in cli], abs=0.1)  # pixels differ in the last bits
    recorded = json.loads((model / "decoding.json").read_text())  # the older 4 settings; the rest default
    assert json.loads((out / "decoding.json").read_text()) == {**recorded, "rerank": "beam", "consensus_weights": "uniform"}


def test_the_graph_reads_images_as_the_cli_does(exported, tmp_path: Path, capsys) -> None:
    """`read_image_graph` against `read_image` (what the CLI, the service and evaluate use) on a
    camera-size JPEG in every EXIF orientation, an odd aspect, grey, 16-bit and transparent
    images: the same orientation and pixels within half a level on average, 2 at most (before the EXIF and
    antialiasing work, the export's pixels of a rotated 12 MP photo were a different image)."""
    import io

    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from benchmarks.photos import photo_mix
    from captioner.app.export import exif_orientation, read_image_graph
    from captioner.features.images import read_image

    images = photo_mix(seed=1, camera=(2016, 1512))
    camera = Image.open(io.BytesIO(images["camera_exif3"]))
    for orientation in (2, 4, 5, 7, 8):  # 3 and 6 are in the mix already
        exif = camera.getexif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        camera.save(buf, "JPEG", quality=88, exif=exif.tobytes())
        images[f"camera_exif{orientation}"] = buf.getvalue()
    for name, data in images.items():
        path = tmp_path / f"{name}.img"
        path.write_bytes(data)
        want = read_image(path, 224).pixels.astype(np.float64)
        got = read_image_graph(tf.constant(data), 224).numpy().astype(np.float64)
        stored = int(name.removeprefix("camera_exif")) if name.startswith("camera_exif") else 1
        assert int(exif_orientation(tf.constant(data))) == stored, name
        assert np.abs(got - want).mean() <= 0.5 and np.abs(got - want).max() <= 2, name
    # ... and the same captions: the exported SavedModel and `captioner caption` on these files
    model, _, out = exported
    files = sorted(tmp_path.glob("*.img"))
    assert main(["caption", *map(str, files), "--model", str(model), "--json"]) == 0
    cli = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    loaded = tf.saved_model.load(str(out))  # kept: its variables must outlive the call
    graph = loaded.caption(tf.constant([f.read_bytes() for f in files]))
    # These photos are far from the tiny model's squares, so two beams can tie within the pixels'
    # last-bit differences (CI once saw "a green square" for "a red square"): a differing caption
    # must be such a tie, its score within 0.1 of the CLI's, and most captions must agree.
    pairs = [(c.decode(), float(s), r["caption"], r["score"])
             for c, s, r in zip(graph["caption"].numpy(), graph["score"].numpy(), cli)]
    differ = [p for p in pairs if p[0] != p[2]]
    assert all(abs(p[1] - p[3]) <= 0.1 for p in pairs), pairs
    assert len(differ) <= len(pairs) // 5, differ


def test_tf_serving_layout_loads_with_tensorflow_alone(exported, tmp_path: Path, capsys) -> None:
    """`--tf-serving NAME` writes OUT/NAME/1/, then /2/; its serving_default signature captions
    encoded images (what TF Serving calls)."""
    model, photos, _ = exported
    for version in (1, 2):
        assert main(["export", "--model", str(model), str(tmp_path), "--tf-serving", "captioner"]) == 0
        assert (tmp_path / "captioner" / str(version) / "saved_model.pb").is_file()
    assert "--model_base_path=" in capsys.readouterr().out
    images = sorted(photos)[:2]
    script = ("import sys, tensorflow as tf\n"
              "sig = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
              "out = sig(images=tf.constant([open(f, 'rb').read() for f in sys.argv[2:]]))\n"
              "print(sorted(out), [c.decode() for c in out['caption'].numpy()])")
    proc = subprocess.run([sys.executable, "-I", "-c", script, str(tmp_path / "captioner" / "2"), *map(str, images)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    keys, captions = proc.stdout.strip().splitlines()[-1].split("] [")
    assert keys == "['caption', 'score'" and captions.count("'") == 4
    assert main(["export", "--model", str(model), str(tmp_path), "--tf-serving", "../up"]) == 2


def test_export_of_a_missing_model_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["export", "--model", str(tmp_path / "none"), str(tmp_path / "out")]) == 2
    assert "no trained model at" in capsys.readouterr().err


def _toy_graph(models: list, vocab, config):
    """A CaptionGraph over `models` without a CNN: its `decode` takes features."""
    from types import SimpleNamespace

    from captioner.app.export import CaptionGraph
    from captioner.decoding.captioner import Captioner

    backbone = SimpleNamespace(model=None, name="efficientnet_lite0", input_size=224, preprocess_graph=None)
    return CaptionGraph(Captioner(models, vocab, backbone, config), config)


@pytest.mark.parametrize("kinds", [("merge",), ("attention", "merge")])
def test_the_graph_decodes_exactly_as_beam_search(kinds) -> None:
    """The exported while_loop against `captioner.decoding.search.beam_search` on the same features and
    (untrained, so repetitive) models: same words and scores for greedy, beam, length penalty and
    n-gram blocking, including captions cut at max_length."""
    import keras
    import numpy as np
    import tensorflow as tf

    from captioner.model.step import StepDecoder
    from captioner.decoding.search import beam_search
    from captioner.model.build import build_attention_model, build_merge_model
    from captioner.config.decoding import DecodingConfig
    from captioner.datasets.text import build_vocabulary

    vocab = build_vocabulary([f"startseq {' '.join('abcdefghijkl')} endseq"], 1)
    regions, channels = 4, 6
    keras.utils.set_random_seed(3)
    models = []
    for kind in kinds:
        if kind == "attention":
            m = build_attention_model(len(vocab), regions, channels, 8, 16, 8, 0.0, 0.0)
        else:
            m = build_merge_model(len(vocab), channels * (regions if len(kinds) == 1 else 1), 8, 16, 0.0)
        logits = m.get_layer("logits")
        logits.kernel.assign(logits.kernel * 6.0)  # peaky: greedy repeats itself
        models.append(m)
    feats = np.random.default_rng(0).normal(size=(5, regions * channels)).astype(np.float32)
    decoder = StepDecoder(models)
    results = {}
    for config in [DecodingConfig(beam_width=1, length_penalty=0.0, block_repeat_ngram=0, max_length=7), DecodingConfig(beam_width=3, length_penalty=0.0, block_repeat_ngram=0, max_length=7), DecodingConfig(beam_width=3, length_penalty=1.1, block_repeat_ngram=2, max_length=7),
                   DecodingConfig(beam_width=4, length_penalty=0.6, block_repeat_ngram=3, max_length=9), DecodingConfig(beam_width=2, length_penalty=0.0, block_repeat_ngram=1, max_length=5)]:
        want = beam_search(decoder, feats, vocab, config.beam_width, config.max_length, config.length_penalty,
                           config.block_repeat_ngram)
        got = _toy_graph(models, vocab, config).decode(tf.constant(feats))
        texts = [c.decode() for c in got["caption"].numpy()]
        assert texts == [" ".join(c.words) for c in want], config
        assert got["score"].numpy() == pytest.approx([c.logprob for c in want], abs=1e-4), config
        results[config] = texts
    assert len({tuple(t) for t in results.values()}) >= 3  # the settings do change the captions
    assert any(len(t.split()) == 7 for t in results[DecodingConfig(beam_width=1, length_penalty=0.0, block_repeat_ngram=0, max_length=7)])  # some are cut


def test_consensus_reranking_in_the_cli_and_the_pipeline_agree_and_export_refuses_it(exported, tmp_path: Path,
                                                                                     capsys) -> None:
    """`--rerank consensus` captions as the pipeline's evaluation does with the same settings; it
    needs the folder's n-gram frequencies (a clear error names the missing file), and the
    SavedModel export refuses it rather than decode otherwise."""
    from captioner.config.decoding import DecodingConfig
    from captioner.decoding.cider import CiderD
    from captioner.model.folder import NGRAMS_FILE
    from tests.helpers.models import evaluate_like_the_pipeline

    model, photos, _ = exported
    images = sorted(photos)[:6]
    flags = ["--beam", "4", "--rerank", "consensus", "--no-repeat-ngram", "0", "--length-penalty", "0"]
    assert main(["caption", *map(str, images), "--model", str(model), *flags]) == 2
    assert f"{model / NGRAMS_FILE}: missing; consensus reranking needs" in capsys.readouterr().err

    folder = tmp_path / "model"
    shutil.copytree(model, folder)
    CiderD([[c.split()] for c in photos.values()]).save(folder / NGRAMS_FILE)
    assert main(["caption", *map(str, images), "--model", str(folder), "--json", *flags]) == 0
    cli = [json.loads(line)["caption"] for line in capsys.readouterr().out.splitlines()]
    config = DecodingConfig(beam_width=4, max_length=6, rerank="consensus")
    assert cli == evaluate_like_the_pipeline(folder, images, config)

    assert main(["export", "--model", str(folder), str(tmp_path / "out"), "--rerank", "consensus"]) == 2
    assert "cannot rerank by consensus; export with --rerank beam" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
