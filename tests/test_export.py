"""`captioner export`: a SavedModel loaded in a fresh process that cannot import captioner gives
the CLI's (greedy) captions from image bytes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from captioner.cli import main
from tests.test_cli import trained_tiny_model

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
    model, photos = trained_tiny_model(tmp_path_factory.getbasetemp())
    out = tmp_path_factory.mktemp("export") / "saved"
    assert main(["export", "--model", str(model), "--max-length", "6", str(out)]) == 0
    return model, photos, out


def test_export_in_a_fresh_process_gives_the_cli_captions(exported, capsys) -> None:
    model, photos, out = exported
    images = [p for i, p in enumerate(sorted(photos)) if i % 3 == 1][:6]  # JPEG and PNG
    assert main(["caption", *map(str, images), "--model", str(model), "--json", "--beam", "1",
                 "--max-length", "6"]) == 0
    cli = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    proc = subprocess.run([sys.executable, "-I", "-c", LOADER, str(out), *map(str, images)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["captioner_loaded"] is False
    assert got["captions"] == [r["caption"] for r in cli]
    assert got["captions"] == [photos[p] for p in images]  # the model's captions, whole (6 words allowed)
    assert got["scores"] == pytest.approx([r["score"] for r in cli], abs=0.1)  # pixels differ in the last bits
    assert json.loads((out / "decoding.json").read_text()) == {
        "beam_width": 1, "length_penalty": 0.0, "block_repeat_ngram": 0, "max_length": 6}


def test_export_of_a_missing_model_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["export", "--model", str(tmp_path / "none"), str(tmp_path / "out")]) == 2
    assert "no trained model at" in capsys.readouterr().err
