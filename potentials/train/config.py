"""The training configuration: a YAML file ↔ nested dataclasses, validated on load.

    data:      where the labelled structures come from (paths, keys, units, split, E0s)
    model:     model_type, optional species and tp_backend, and the model's own hyperparameters
    training:  optimisation (epochs, batch size, learning rate, schedule, EMA, loss weights, ...)
    output:    the run directory

Every key, its default and its unit is documented in docs/training.md; a fully commented
example is examples/train_nequip.yaml. `load_config` rejects unknown or misspelled keys with
an error that names the key and its section and suggests the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from equimd.errors import EquimdError


class ConfigError(EquimdError, ValueError):
    """A training configuration that cannot be used (unknown key, wrong type, bad value)."""


@dataclass
class DataConfig:
    """Labelled structures and how to read them.

    train:          training file (.xyz/.extxyz, equimd .h5, rMD17 .npz)
    valid:          validation file; if None, `valid_fraction` of the training frames
    valid_fraction: fraction of the training frames held out for validation (random, `seed`)
    train_index:    frames of `train` to use, ASE-style index string (":", ":950", "::2")
    valid_index:    frames of `valid` to use (same syntax)
    max_frames:     use at most this many frames of `train` (the first ones, after `train_index`)
    energy_key, forces_key, stress_key, virial_key, energy_unit, length_unit: see
                    `equimd.potentials.data.io.DatasetKeys` (labels are converted to eV and Å on
                    read; a key set to null is not read)
    e0s:            per-species reference energies (eV): "least_squares" (fit on the training
                    set), "isolated:<file>" (isolated-atom frames), or {symbol: energy in eV}
    """

    train: str
    valid: str | None = None
    valid_fraction: float = 0.05
    train_index: str = ":"
    valid_index: str = ":"
    max_frames: int | None = None
    energy_key: str | None = "energy"
    forces_key: str | None = "forces"
    stress_key: str | None = "stress"
    virial_key: str | None = None
    energy_unit: str = "eV"
    length_unit: str = "Å"
    e0s: str | dict[str, float] = "least_squares"


@dataclass
class ModelConfig:
    """The potential to train.

    model_type:      a registered model name ("nequip", ...)
    species:         element symbols the model knows; default: the elements in the data
    tp_backend:      convolution backend applied to the built model ("fused", "e3nn", "so2",
                     "cueq"; `apply_convolution_backend`); default: the model's own
    hyperparameters: the model constructor's arguments (in YAML: the other keys of `model`);
                     `avg_num_neighbors` is computed from the training set unless given
    """

    model_type: str = "nequip"
    species: list[str] | None = None
    tp_backend: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingConfig:
    """Optimisation settings (units in brackets).

    epochs:                  number of passes over the training set
    batch_size:              structures per optimisation step
    valid_batch_size:        structures per validation batch (default: batch_size)
    lr:                      initial learning rate
    optimizer:               "adam" or "amsgrad"
    weight_decay:            L2 penalty added to the gradient (Adam's weight_decay, not AdamW)
    schedule:                "plateau" (ReduceLROnPlateau) or "cosine" (warm-up, then a half
                             cosine to min_lr at the end of the run: epochs or the time limit,
                             whichever comes first; `equimd.potentials.train.schedule`)
    warmup_fraction:         "cosine": linear warm-up over this fraction of the run
    late_energy_weight:      energy_weight of the training loss from `late_stage_start` on (the
                             late energy stage; None: off) [(eV/atom)⁻²]
    late_stage_start:        fraction of the run where the late energy stage begins
    scheduler_factor:        ReduceLROnPlateau: multiply lr by this when validation loss stalls
    scheduler_patience:      ReduceLROnPlateau: epochs without improvement before reducing lr
    min_lr:                  lower bound of the learning rate
    ema_decay:               exponential moving average of the weights (None: off); validation,
                             best.pt and the deployed weights use the averaged weights
    early_stopping_patience: stop after this many epochs without a better validation loss
    energy_weight:           loss weight of the squared energy-per-atom error [(eV/atom)⁻²]
    forces_weight:           loss weight of the squared force-component error [(eV/Å)⁻²]
    stress_weight:           loss weight of the squared stress-component error [(eV/Å³)⁻²]
    max_wall_time:           stop cleanly after this many seconds of this invocation [s]
    max_cpu_time:            stop cleanly after this many CPU seconds of this process (all its
                             threads, `time.process_time`) in this invocation [s]: an equal
                             compute budget on a shared or noisy machine
    seed:                    seed of the split, the initial weights and the data order
    dtype:                   "float32" or "float64" for the weights and the data
    device:                  "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    checkpoint_interval:     write last.pt every this many epochs (and at the end)
    clip_grad_norm:          clip the gradient norm to this value (None: no clipping)
    zero_readout:            a fresh run starts from the constant E0 + shift (the model's last
                             readout layer zeroed, for models that support it)
    refit_energy_reference:  when the run ends, refit the per-species E0s of best.pt by least
                             squares on the training energies (`train.energy_reference`)
    """

    epochs: int = 100
    batch_size: int = 5
    valid_batch_size: int | None = None
    lr: float = 0.01
    optimizer: Literal["adam", "amsgrad"] = "adam"
    weight_decay: float = 0.0
    schedule: Literal["plateau", "cosine"] = "plateau"
    warmup_fraction: float = 0.02
    late_energy_weight: float | None = None
    late_stage_start: float = 0.8
    scheduler_factor: float = 0.8
    scheduler_patience: int = 50
    min_lr: float = 1e-6
    ema_decay: float | None = 0.99
    early_stopping_patience: int | None = None
    energy_weight: float = 1.0
    forces_weight: float = 100.0
    stress_weight: float = 100.0
    max_wall_time: float | None = None
    max_cpu_time: float | None = None
    seed: int = 0
    dtype: Literal["float32", "float64"] = "float64"
    device: str = "auto"
    checkpoint_interval: int = 1
    clip_grad_norm: float | None = 10.0
    zero_readout: bool = True
    refit_energy_reference: bool = True


@dataclass
class OutputConfig:
    """run_dir: directory of best.pt, last.pt, metrics.csv and config.yaml.
    overwrite: allow a fresh run in a directory that already holds a run's files."""

    run_dir: str = "runs/train"
    overwrite: bool = False


@dataclass
class TrainConfig:
    """A complete training run (see the module docstring for the sections)."""

    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form in the YAML layout (model hyperparameters flattened into `model`)."""
        raw = dataclasses.asdict(self)
        model = raw.pop("model")
        hyperparameters = model.pop("hyperparameters")
        raw["model"] = {**model, **hyperparameters}
        return {
            "data": raw["data"], "model": raw["model"],
            "training": raw["training"], "output": raw["output"],
        }


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
    "output": OutputConfig,
}
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a YAML training config; relative paths are resolved relative to it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    return config_from_dict(raw, base_dir=path.parent, source=str(path))


def config_from_dict(
    raw: dict[str, Any], base_dir: str | Path = ".", source: str = "<config>"
) -> TrainConfig:
    """Validate a config in the YAML layout; relative paths are taken relative to `base_dir`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections {list(SECTIONS)}")
    for name in raw:
        _reject_unknown(name, list(SECTIONS), source, "the top level")
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{name}' must be a mapping, got {values!r}")
        if cls is ModelConfig:
            sections[name] = _model_section(values, source)
        else:
            sections[name] = _build_section(cls, name, values, source)
    config = TrainConfig(**sections)
    _check_values(config, source)
    _resolve_paths(config, Path(base_dir))
    return config


def _reject_unknown(key: str, valid: list[str], source: str, where: str) -> None:
    if key in valid:
        return
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(
        f"{source}: unknown key '{key}' in {where}{hint} (valid keys: {', '.join(valid)})"
    )


def _build_section(cls: type, name: str, values: dict[str, Any], source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        _reject_unknown(key, names, source, f"section '{name}'")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            kwargs[f.name] = _check_type(values[f.name], hints[f.name], f"{name}.{f.name}", source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: section '{name}' needs the key '{f.name}'")
    return cls(**kwargs)


def _model_section(values: dict[str, Any], source: str) -> ModelConfig:
    """`model_type`, `species` and `tp_backend`, plus the rest as hyperparameters checked
    against the model."""
    from equimd.potentials.models import MODELS
    from equimd.potentials.nn.convolution import BACKENDS

    model_type = _check_type(values.get("model_type", "nequip"), str, "model.model_type", source)
    if model_type not in MODELS:
        close = difflib.get_close_matches(model_type, list(MODELS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"{source}: unknown model.model_type '{model_type}'{hint} "
            f"(available: {', '.join(sorted(MODELS))})"
        )
    species = values.get("species")
    if species is not None:
        species = _check_type(species, list[str], "model.species", source)
    tp_backend = _check_type(values.get("tp_backend"), str | None, "model.tp_backend", source)
    if tp_backend is not None and tp_backend not in BACKENDS:
        raise ConfigError(
            f"{source}: unknown model.tp_backend '{tp_backend}' (available: {', '.join(BACKENDS)})"
        )
    parameters = model_hyperparameter_defaults(model_type)
    special = ("model_type", "species", "tp_backend")
    valid = [*special, *parameters]
    hyperparameters = {}
    for key, value in values.items():
        if key in special:
            continue
        _reject_unknown(key, valid, source, f"section 'model' (model_type '{model_type}')")
        hyperparameters[key] = _check_like_default(value, parameters[key], f"model.{key}", source)
    return ModelConfig(
        model_type=model_type, species=species, tp_backend=tp_backend, hyperparameters=hyperparameters
    )


def model_hyperparameter_defaults(model_type: str) -> dict[str, Any]:
    """{name: default} of a registered model's constructor (without `species`)."""
    from equimd.potentials.models import MODELS

    signature = inspect.signature(MODELS[model_type].__init__)
    return {
        name: parameter.default
        for name, parameter in signature.parameters.items()
        if name not in ("self", "species")
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    }


def _check_like_default(value: Any, default: Any, where: str, source: str) -> Any:
    """Type-check a model hyperparameter against the type of its default value."""
    if default is inspect.Parameter.empty or default is None:
        return value
    if isinstance(default, bool):
        return _check_type(value, bool, where, source)
    if isinstance(default, int):
        return _check_type(value, int, where, source)
    if isinstance(default, float):
        return _check_type(value, float, where, source)
    if isinstance(default, str):
        return _check_type(value, str, where, source)
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {where} must be a list, got {value!r}")
        return list(value)
    return value


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _check_type(value: Any, annotation: Any, where: str, source: str) -> Any:
    """Return `value` (floats coerced from ints and numeric strings) or raise `ConfigError`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, where, source)
            except ConfigError as error:
                errors.append(error)
        raise ConfigError(f"{source}: {where} must be {_type_name(annotation)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            options = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{source}: {where} must be one of {options}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {where} must be a list, got {value!r}")
        return [_check_type(item, args[0], f"{where}[{i}]", source) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {where} must be a mapping, got {value!r}")
        return {
            _check_type(k, args[0], f"{where} key", source): _check_type(
                v, args[1], f"{where}.{k}", source
            )
            for k, v in value.items()
        }
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {where} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {where} must be an integer, got {value!r}")
        return value
    if annotation is float:
        # YAML 1.1 reads "1e-3" (no dot) as a string: accept numeric strings for floats
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {where} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {where} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: {where}: unsupported type {_type_name(annotation)}")


def _check_values(config: TrainConfig, source: str) -> None:
    from equimd.checks import atomic_number

    data, training = config.data, config.training

    def fail(message: str) -> None:
        raise ConfigError(f"{source}: {message}")

    from equimd.potentials.data.io import DatasetKeys

    try:
        DatasetKeys(energy_unit=data.energy_unit, length_unit=data.length_unit)
    except ValueError as error:
        fail(f"data: {error}")
    if data.valid is None and not 0.0 < data.valid_fraction < 1.0:
        fail(f"data.valid_fraction must be in (0, 1) when data.valid is not given, got {data.valid_fraction}")
    if data.max_frames is not None and data.max_frames < 1:
        fail(f"data.max_frames must be positive, got {data.max_frames}")
    if isinstance(data.e0s, str):
        if data.e0s != "least_squares" and not data.e0s.startswith("isolated:"):
            fail(
                f"data.e0s must be 'least_squares', 'isolated:<file>' or a mapping "
                f"{{symbol: eV}}, got {data.e0s!r}"
            )
    else:
        for name in data.e0s:
            try:
                atomic_number(name)
            except ValueError:
                fail(f"data.e0s: unknown element symbol {name!r}")
    for name in config.model.species or []:
        try:
            atomic_number(name)
        except ValueError:
            fail(f"model.species: unknown element symbol {name!r}")
    positive = {
        "epochs": training.epochs, "batch_size": training.batch_size, "lr": training.lr,
        "checkpoint_interval": training.checkpoint_interval,
        "valid_batch_size": training.valid_batch_size, "max_wall_time": training.max_wall_time,
        "max_cpu_time": training.max_cpu_time,
        "clip_grad_norm": training.clip_grad_norm,
    }
    for key, value in positive.items():
        if value is not None and value <= 0:
            fail(f"training.{key} must be positive, got {value}")
    for key in ("energy_weight", "forces_weight", "stress_weight", "weight_decay", "min_lr"):
        if getattr(training, key) < 0:
            fail(f"training.{key} must not be negative, got {getattr(training, key)}")
    if not 0.0 <= training.warmup_fraction < 1.0:
        fail(f"training.warmup_fraction must be in [0, 1), got {training.warmup_fraction}")
    if not 0.0 <= training.late_stage_start <= 1.0:
        fail(f"training.late_stage_start must be in [0, 1], got {training.late_stage_start}")
    if training.late_energy_weight is not None and training.late_energy_weight < 0:
        fail(f"training.late_energy_weight must not be negative, got {training.late_energy_weight}")
    if not 0.0 < training.scheduler_factor < 1.0:
        fail(f"training.scheduler_factor must be in (0, 1), got {training.scheduler_factor}")
    if training.scheduler_patience < 0:
        fail(f"training.scheduler_patience must not be negative, got {training.scheduler_patience}")
    if training.ema_decay is not None and not 0.0 <= training.ema_decay < 1.0:
        fail(f"training.ema_decay must be in [0, 1) or null, got {training.ema_decay}")
    if training.early_stopping_patience is not None and training.early_stopping_patience < 1:
        fail(f"training.early_stopping_patience must be positive, got {training.early_stopping_patience}")
    if not _DEVICE.match(training.device):
        fail(f"training.device must be auto, cpu, cuda, cuda:N or mps, got {training.device!r}")
    if training.energy_weight == training.forces_weight == training.stress_weight == 0:
        fail("all loss weights are zero")


def _resolve_paths(config: TrainConfig, base_dir: Path) -> None:
    def resolve(path: str) -> str:
        candidate = Path(path).expanduser()
        return str(candidate if candidate.is_absolute() else (base_dir / candidate).resolve())

    config.data.train = resolve(config.data.train)
    if config.data.valid is not None:
        config.data.valid = resolve(config.data.valid)
    if isinstance(config.data.e0s, str) and config.data.e0s.startswith("isolated:"):
        config.data.e0s = "isolated:" + resolve(config.data.e0s.removeprefix("isolated:"))
    config.output.run_dir = resolve(config.output.run_dir)
