import numpy as np
import pytest

from captioner.model.build import build_merge_model, load_model, model_signature
from captioner.training.fit import compile_model


def test_shapes_and_signature() -> None:
    model = build_merge_model(vocab_size=30, feature_dim=12, embedding_dim=8, units=16, dropout=0.5)
    out = model([np.zeros((2, 12), np.float32), np.ones((2, 7), np.int32)])
    assert out.shape == (2, 7, 30)
    assert model_signature(model) == (12, 30)


def test_padding_never_reaches_the_loss() -> None:
    """Same captions with extra trailing padding give exactly the same loss (Keras 3 mask trap)."""
    model = build_merge_model(20, 6, 8, 8, 0.0)
    compile_model(model, 1e-3)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((4, 6)).astype(np.float32)
    ids = rng.integers(1, 20, (4, 6)).astype(np.int32)
    padded = np.pad(ids, ((0, 0), (0, 5)))
    short = model.evaluate([feats, ids[:, :-1]], ids[:, 1:], verbose=0, return_dict=True)["loss"]
    long = model.evaluate([feats, padded[:, :-1]], padded[:, 1:], verbose=0, return_dict=True)["loss"]
    assert long == pytest.approx(short, rel=1e-5)


def test_save_load_roundtrip_and_mismatch_errors(tmp_path, toy) -> None:
    path = tmp_path / "m.keras"
    toy["model"].save(path)
    model = load_model(str(path), 8, len(toy["vocab"]))
    x = [toy["feats"][:3], toy["ids"][:3, :-1]]
    np.testing.assert_allclose(model(x).numpy(), toy["model"](x).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="expects 8-d image features but the features have 1280"):
        load_model(str(path), 1280, len(toy["vocab"]))
    with pytest.raises(ValueError, match="vocabulary has 99"):
        load_model(str(path), 8, 99)
    with pytest.raises(ValueError, match="cannot load the model"):
        load_model(str(tmp_path / "missing.keras"))


def test_label_smoothing_loss_matches_keras_at_zero_and_ignores_padding() -> None:
    import keras

    from captioner.training.fit import smoothed_masked_loss

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 5, 11)).astype(np.float32)
    y = rng.integers(1, 11, (3, 5)).astype(np.int32)
    y[:, 3:] = 0
    ref = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)(y, logits)
    assert float(smoothed_masked_loss(0.0)(y, logits)) == pytest.approx(float(ref), rel=1e-5)
    smoothed = float(smoothed_masked_loss(0.1)(y, logits))
    assert smoothed != pytest.approx(float(ref))
    changed = logits.copy()
    changed[:, 3:] = 100.0  # padded positions: any logits give the same loss
    assert float(smoothed_masked_loss(0.1)(y, changed)) == pytest.approx(smoothed, rel=1e-6)


def write_folder(folder, toy, members: list[str], files: list[str] | None = None) -> None:
    """A model folder by hand: the toy model under `files` (default: `members`), meta.json naming `members`."""
    from captioner.datasets.text import save_vocabulary
    from captioner.runtime.io import write_json

    folder.mkdir(exist_ok=True)
    for name in files if files is not None else members:
        toy["model"].save(folder / name)
    save_vocabulary(folder / "vocab.json", toy["vocab"])
    write_json(folder / "meta.json", {"members": members, "feature_dim": 8, "backbone": "x"})


def test_load_members_of_an_ensemble_folder(tmp_path, toy) -> None:
    from captioner.model.folder import ModelFolder, member_files, model_meta, save_model_folder

    write_folder(tmp_path, toy, ["model.keras", "model_1.keras"])
    folder = ModelFolder.open(tmp_path)
    assert len(folder.load_models(8, len(toy["vocab"]))) == 2
    assert member_files({}) == ["model.keras"]  # folders written before ensembles existed
    with pytest.raises(ValueError, match="members"):
        member_files({"members": []})
    write_folder(tmp_path / "missing", toy, ["model.keras", "model_2.keras"], files=["model.keras"])
    with pytest.raises(ValueError, match="model_2.keras"):
        ModelFolder.open(tmp_path / "missing").load_models()
    meta = model_meta(backbone="x", weights="none", feature_dim=8, vocab_size=len(toy["vocab"]),
                      member_kinds=["merge", "merge"], grid=False, best_epoch=1, best_val_loss=0.5)
    save_model_folder(tmp_path / "saved", [toy["model"], toy["model"]], toy["vocab"], meta)
    saved = ModelFolder.open(tmp_path / "saved")
    assert saved.members == ["model.keras", "model_1.keras"] and saved.meta == meta
    assert len(saved.load_models(8, len(toy["vocab"]))) == 2 and saved.vocabulary().tokens == toy["vocab"].tokens


@pytest.mark.parametrize("member", ["/etc/model.keras", "../model.keras", "sub/model.keras", "..", ".", "", "a\\b.keras"])
def test_members_must_be_plain_file_names(tmp_path, toy, member: str) -> None:
    from captioner.model.folder import ModelFolder

    write_folder(tmp_path / "model", toy, [member], files=["model.keras"])
    toy["model"].save(tmp_path / "model.keras")  # a model outside the folder, where '..' points
    with pytest.raises(ValueError, match=r"model/meta\.json: 'members' must be plain file names"):
        ModelFolder.open(tmp_path / "model").load_models()
