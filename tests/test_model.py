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


def test_load_members_of_an_ensemble_folder(tmp_path, toy) -> None:
    from captioner.model.build import load_members
    from captioner.model.folder import member_files

    toy["model"].save(tmp_path / "model.keras")
    toy["model"].save(tmp_path / "model_1.keras")
    meta = {"members": ["model.keras", "model_1.keras"]}
    assert len(load_members(tmp_path, meta, 8, len(toy["vocab"]))) == 2
    assert member_files({}) == ["model.keras"]  # folders written before ensembles existed
    with pytest.raises(ValueError, match="members"):
        member_files({"members": []})
    with pytest.raises(ValueError, match="model_2.keras"):
        load_members(tmp_path, {"members": ["model.keras", "model_2.keras"]})


@pytest.mark.parametrize("member", ["/etc/model.keras", "../model.keras", "sub/model.keras", "..", ".", "", "a\\b.keras"])
def test_members_must_be_plain_file_names(tmp_path, toy, member: str) -> None:
    from captioner.model.build import load_members

    (tmp_path / "model").mkdir()
    toy["model"].save(tmp_path / "model.keras")  # a model outside the folder, where '..' points
    with pytest.raises(ValueError, match=r"model/meta\.json: 'members' must be plain file names"):
        load_members(tmp_path / "model", {"members": [member]})
