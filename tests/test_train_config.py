"""The YAML training config: defaults, validation, helpful errors, path resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from equimd.potentials.train.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


def test_minimal_config_gets_documented_defaults(tmp_path):
    config = load_config(write(tmp_path, "data:\n  train: data/train.xyz\n"))
    assert config.model.model_type == "nequip"
    assert config.training.optimizer == "adam" and config.training.dtype == "float64"
    assert config.data.e0s == "least_squares" and config.data.valid is None


def test_relative_paths_are_resolved_relative_to_the_yaml_file(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    config = load_config(
        write(
            tmp_path,
            "data:\n  train: data/train.xyz\n  valid: ../valid.xyz\n  e0s: isolated:e0.xyz\n"
            "output:\n  run_dir: runs/a\n",
        )
    )
    assert config.data.train == str(tmp_path / "data" / "train.xyz")
    assert config.data.valid == str(tmp_path.parent / "valid.xyz")
    assert config.data.e0s == "isolated:" + str(tmp_path / "e0.xyz")
    assert config.output.run_dir == str(tmp_path / "runs" / "a")


@pytest.mark.parametrize(
    "text, section, key, suggestion",
    [
        ("data:\n  train: a.xyz\ntraining:\n  lrr: 0.01\n", "training", "lrr", "lr"),
        ("data:\n  train: a.xyz\ntraining:\n  ema_decy: 0.9\n", "training", "ema_decy", "ema_decay"),
        ("data:\n  train: a.xyz\n  forces_kye: F\n", "data", "forces_kye", "forces_key"),
        ("data:\n  train: a.xyz\nmodel:\n  num_layer: 3\n", "model", "num_layer", "num_layers"),
        ("data:\n  train: a.xyz\ntrainig:\n  lr: 0.01\n", "the top level", "trainig", "training"),
    ],
)
def test_unknown_key_names_section_and_suggests_closest_key(tmp_path, text, section, key, suggestion):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    message = str(error.value)
    assert f"'{key}'" in message and section in message
    assert f"did you mean '{suggestion}'" in message
    assert str(tmp_path / "train.yaml") in message


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("training:\n  lr: 0.01\n", "needs the key 'train'"),
        ("data:\n  train: a.xyz\ntraining:\n  epochs: ten\n", "training.epochs must be an integer"),
        ("data:\n  train: a.xyz\ntraining:\n  epochs: 2.5\n", "training.epochs must be an integer"),
        ("data:\n  train: a.xyz\ntraining:\n  optimizer: sgd\n", "training.optimizer must be one of"),
        ("data:\n  train: a.xyz\ntraining:\n  dtype: float16\n", "training.dtype must be one of"),
        ("data:\n  train: a.xyz\ntraining:\n  device: gpu\n", "training.device"),
        ("data:\n  train: a.xyz\n  valid_fraction: 1.5\n", "valid_fraction"),
        ("data:\n  train: a.xyz\n  e0s: average\n", "data.e0s"),
        ("data:\n  train: a.xyz\n  e0s: {Xx: 1.0}\n", "unknown element symbol 'Xx'"),
        ("data:\n  train: a.xyz\nmodel:\n  model_type: nequipp\n", "did you mean 'nequip'"),
        ("data:\n  train: a.xyz\nmodel:\n  l_max: two\n", "model.l_max must be an integer"),
        ("data:\n  train: a.xyz\ntraining:\n  ema_decay: 1.0\n", "ema_decay"),
        ("data:\n  train: a.xyz\ntraining:\n  max_cpu_time: 0\n", "training.max_cpu_time must be positive"),
        ("data:\n  train: a.xyz\ntraining: [1, 2]\n", "section 'training' must be a mapping"),
        ("data: [\n", "not valid YAML"),
    ],
)
def test_invalid_values_are_rejected_with_the_key_named(tmp_path, text, fragment):
    with pytest.raises(ConfigError, match=None) as error:
        load_config(write(tmp_path, text))
    assert fragment in str(error.value)


def test_numbers_in_exponent_notation_and_nulls_are_accepted(tmp_path):
    config = load_config(
        write(
            tmp_path,
            "data:\n  train: a.xyz\n  e0s: {Cu: -3.5, H: -13}\n"
            "training:\n  lr: 1e-3\n  min_lr: 1.0e-7\n  ema_decay: null\n  clip_grad_norm: null\n"
            "model:\n  r_max: 4\n  radial_mlp_hidden: [32, 32]\n  species: [Cu, H]\n",
        )
    )
    assert config.training.lr == pytest.approx(1e-3)
    assert config.training.ema_decay is None and config.training.clip_grad_norm is None
    assert config.data.e0s == {"Cu": -3.5, "H": -13.0}
    assert config.model.hyperparameters == {"r_max": 4.0, "radial_mlp_hidden": [32, 32]}
    assert config.model.species == ["Cu", "H"]


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")


def test_example_config_is_valid():
    config = load_config(REPO / "examples" / "train_nequip.yaml")
    assert config.model.model_type == "nequip"
    assert Path(config.data.train).is_absolute()


def test_to_dict_round_trips_through_the_loader(tmp_path):
    import yaml

    config = load_config(
        write(tmp_path, "data:\n  train: a.xyz\nmodel:\n  num_layers: 2\ntraining:\n  epochs: 3\n")
    )
    again = load_config(write(tmp_path, yaml.safe_dump(config.to_dict(), allow_unicode=True)))
    assert again == config
