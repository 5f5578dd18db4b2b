from pathlib import Path

import pytest
import yaml

from captioner.config.params import ParamsError, check_data_root, load_params

REPO = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_repo_params_are_valid_and_match_the_file() -> None:
    """The committed params.yaml loads, and every value it writes is the value the stages get
    (no key silently dropped or defaulted)."""
    params = load_params(REPO / "params.yaml")
    written = yaml.safe_load((REPO / "params.yaml").read_text())
    loaded = params.model_dump()
    for section, values in written.items():
        for key, value in values.items():
            assert loaded[section][key] == value, f"{section}.{key}"
    assert params.features.backbone == "efficientnet_lite0"


def test_defaults_when_sections_are_missing(tmp_path) -> None:
    params = load_params(write(tmp_path, "train: {epochs: 2}\n"))
    assert params.train.epochs == 2 and params.model.units == 256


@pytest.mark.parametrize(
    ("text", "key", "msg"),
    [
        ("train: {epochs: 2, epoch: 3}", "train.epoch", "unknown key"),
        ("trian: {epochs: 2}", "trian", "unknown key"),
        ("model: {units: -4}", "model.units", "greater than 0"),
        ("train: {batch_size: many}", "train.batch_size", "integer"),
        ("evaluate: {beam_width: 0}", "evaluate.beam_width", "greater than or equal to 1"),
        ("features: {backbone: resnet}", "features.backbone", "efficientnet_lite0"),
        ("model: {dropout: 1.5}", "model.dropout", "less than 1"),
        ("scenes: {split_fractions: {train: 0.5, dev: 0.1}}", "scenes.split_fractions", "sum to 1"),
        ("features: {weights: /x.h5}", "(top level)|features.weights", "efficientnet_lite0"),
        ("model: {kind: attention}", "model.kind", "set features.spatial: grid"),
        ("features: {spatial: grid}", "model.kind", "set features.spatial: pooled"),
        ("features: {dtype: float64}", "features.dtype", "float16"),
        ("model: {kind: transformer}", "model.kind", "attention"),
        ("train: {ensemble: 2, merge_members: 1}", "train.merge_members", "only for model.kind attention"),
        ("train: {precision: float16}", "train.precision", "'auto', 'float32', 'mixed_bfloat16' or 'mixed_float16'"),
    ],
)
def test_bad_params_name_the_key(tmp_path, text: str, key: str, msg: str) -> None:
    with pytest.raises(ParamsError) as e:
        load_params(write(tmp_path, text))
    assert "params.yaml" in str(e.value)
    assert any(k in str(e.value) for k in key.split("|")), str(e.value)
    assert msg in str(e.value)


def test_unreadable_files(tmp_path) -> None:
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(write(tmp_path, "a: [1,"))
    with pytest.raises(ParamsError, match="mapping"):
        load_params(write(tmp_path, "- 1\n- 2\n"))


def test_missing_data_root(tmp_path) -> None:
    params = load_params(write(tmp_path, yaml.safe_dump({"data": {"root": "no/such/dir"}})))
    with pytest.raises(ParamsError, match="data.root: .*no/such/dir does not exist"):
        check_data_root(params, tmp_path)


def test_engines_default_to_local_and_are_validated(tmp_path) -> None:
    params = load_params(write(tmp_path, "train: {epochs: 2}\n"))
    assert (params.features.engine, params.train.engine, params.evaluate.engine) == ("local", "local", "local")
    assert params.train.devices == 0 and params.features.threads >= 1
    repo = load_params(REPO / "params.yaml")
    assert (repo.features.engine, repo.train.engine, repo.evaluate.engine) == ("local", "local", "local")
    ok = load_params(write(tmp_path, "features: {engine: ray}\ntrain: {engine: ray, devices: 2}\n"
                                     "evaluate: {engine: ray, shards: 3}\n"))
    assert ok.features.engine == ok.train.engine == ok.evaluate.engine == "ray" and ok.train.devices == 2
    for text, key in (("features: {engine: spark}", "features.engine"), ("train: {engine: dask}", "train.engine"),
                      ("evaluate: {engine: Ray}", "evaluate.engine"), ("train: {threads: 0}", "train.threads"),
                      ("train: {devices: -1}", "train.devices"), ("evaluate: {shards: -2}", "evaluate.shards")):
        with pytest.raises(ParamsError, match=key):
            load_params(write(tmp_path, text + "\n"))
