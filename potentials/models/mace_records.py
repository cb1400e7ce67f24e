"""A mace-torch model file, read without mace-torch, as the converted ("export") record.

`read_mace_file(path)` accepts

* a mace-torch `.model` file (`torch.save(model)`, a pickled `ScaleShiftMACE` / `MACE`), read
  with the restricted unpickler of `equimd.potentials.models.mace_pickle` (no code runs);
* a mace-torch training checkpoint (`{"model": state_dict, "optimizer": ..., ...}`), together
  with a `.model` file of the same architecture (`architecture=`): the checkpoint holds weights
  only;
* a file written by `benchmarks/peers/mace_export.py` (format "mace-torch-state-dict").

and returns the export-format dict that `mace_import.mace_model_from_export` maps onto equimd's
`MACE`: hyperparameters as mace-torch's `extract_config_mace_model` names them (read off the
records, as that function reads them off the modules), per-layer irreps and instructions,
and the state dict. A multi-head model is reduced to the selected head here (`head=`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from equimd.potentials.models.mace_pickle import (
    FunctionRef,
    MacePickleError,
    Record,
    load_records,
    state_dict,
)

EXPORT_FORMAT = "mace-torch-state-dict"
MODEL_CLASSES = ("ScaleShiftMACE", "MACE")
RADIAL_TYPES = {"BesselBasis": "bessel", "GaussianBasis": "gaussian", "ChebychevBasis": "chebyshev"}
TRANSFORMS = {"AgnesiTransform": "Agnesi", "SoftTransform": "Soft"}
PRETRAINING_HEAD = "pt_head"


def read_mace_file(
    path: str | os.PathLike,
    head: str | None = None,
    architecture: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The export-format dict of a mace-torch `.model`, training checkpoint or converted file.

    head: the head of a multi-head model to keep (default: `default_head`).
    architecture: a `.model` file whose hyperparameters go with a training checkpoint's weights.
    Raises `MacePickleError` (an `EquimdError`) with the reason.
    """
    path = Path(path)
    value = load_records(path)
    if isinstance(value, dict) and value.get("format") == EXPORT_FORMAT:
        if head is not None and head not in (value["hyperparameters"].get("heads") or [head]):
            raise MacePickleError(
                f"{path}: no head {head!r} in {value['hyperparameters']['heads']}"
            )
        return value
    if isinstance(value, Record):
        return export_from_model(value, head, source=path)
    if isinstance(value, dict) and "model" in value:
        weights = value["model"]
        if isinstance(weights, Record):  # a checkpoint holding the whole module
            return export_from_model(weights, head, source=path)
        if not isinstance(weights, dict) or not all(
            isinstance(v, torch.Tensor) for v in weights.values()
        ):
            raise MacePickleError(f"{path}: a dict with 'model', but no state dict under it")
        if architecture is None:
            raise MacePickleError(
                f"{path}: a mace-torch training checkpoint holds the weights only; give the "
                "`.model` file of the same run (or any model of the same architecture) for the "
                "hyperparameters: equimd import mace CHECKPOINT --architecture RUN.model -o OUT"
            )
        model = load_records(architecture)
        if not isinstance(model, Record):
            raise MacePickleError(f"{architecture}: not a pickled mace-torch model")
        return export_from_model(model, head, source=path, weights=weights)
    if isinstance(value, dict) and "format" in value:
        raise MacePickleError(
            f"{path}: format {value['format']!r}, expected a mace-torch model or a converted "
            f"one ({EXPORT_FORMAT!r})"
        )
    found = value.qualname if isinstance(value, Record) else type(value).__name__
    raise MacePickleError(
        f"{path}: holds a {found}, not a mace-torch model (a `.model` file), training "
        "checkpoint or converted model"
    )


def default_head(heads: list[str]) -> str:
    """The head a user means: the only one, else the first that is not the pre-training head
    (mace-torch's own choice when it drops heads)."""
    rest = [h for h in heads if h != PRETRAINING_HEAD]
    return (rest or heads)[0]


def export_from_model(
    model: Record,
    head: str | None = None,
    source: str | os.PathLike = "model",
    weights: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The export-format dict of a `ScaleShiftMACE` / `MACE` module record."""
    if model.class_name not in MODEL_CLASSES:
        raise MacePickleError(
            f"{source}: mace-torch model class {model.class_name!r} is not supported "
            f"(supported: {list(MODEL_CLASSES)})"
        )
    state = dict(state_dict(model))
    if weights is not None:
        # a checkpoint of a DistributedDataParallel run prefixes every key with "module."
        if weights and all(k.startswith("module.") for k in weights):
            weights = {k[len("module.") :]: v for k, v in weights.items()}
        missing = sorted(set(state) - set(weights) - {k for k in state if "_compiled" in k})
        if missing:
            raise MacePickleError(
                f"{source}: the checkpoint lacks {missing[:5]} of the architecture's state dict"
            )
        state.update({k: v for k, v in weights.items()})
    hp = hyperparameters(model, state)
    heads = hp["heads"]
    chosen = head if head is not None else default_head(heads)
    if chosen not in heads:
        raise MacePickleError(f"{source}: no head {chosen!r}; the model's heads are {heads}")
    if len(heads) > 1:
        state = select_head(state, heads.index(chosen), len(heads), hp)
        for layer in hp["layers"]:  # the single-head model's readouts
            if "readout_irreps" in layer:
                shapes = layer["readout_irreps"]
                middle = [hp["MLP_irreps"]] if len(shapes) == 3 else []
                layer["readout_irreps"] = [shapes[0], *middle, "1x0e"]
    hp["heads"] = [chosen]
    hp["all_heads"] = heads
    dtype = next((v.dtype for k, v in state.items() if k.endswith(".weight") and v.numel()), None)
    return {
        "format": EXPORT_FORMAT,
        "format_version": 1,
        "mace_version": None,
        "model_class": model.class_name,
        "dtype": str(dtype or torch.float64).replace("torch.", ""),
        "hyperparameters": hp,
        "state_dict": state,
        "dropped_keys": [],
        "read_from": "pickle",
    }


# ----------------------------------------------------------------------- hyperparameters


def irreps(value: Any) -> str:
    """An e3nn `Irreps` / `Irrep` record (or string) as a string, e.g. "8x0e+8x1o"."""
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, Record) and value.class_name == "Irrep":
        degree, parity = _tuple_args(value)
        return f"{int(degree)}{'e' if int(parity) == 1 else 'o'}"
    if isinstance(value, Record) and value.class_name == "_MulIr":
        mul, ir = _tuple_args(value)
        return f"{int(mul)}x{irreps(ir)}"
    if isinstance(value, Record) and value.class_name == "Irreps":
        return "+".join(irreps(m) for m in _tuple_args(value))
    if isinstance(value, tuple | list):
        if len(value) == 2 and all(isinstance(v, int) for v in value):
            return f"{value[0]}{'e' if value[1] == 1 else 'o'}"
        return "+".join(irreps(m) for m in value)
    raise MacePickleError(f"cannot read irreps from {value!r}")


def _tuple_args(record: Record) -> tuple:
    """The tuple a tuple-subclass record was built from (NEWOBJ `cls.__new__(cls, tuple)`)."""
    args = record.args
    if len(args) == 1 and isinstance(args[0], tuple | list):
        return tuple(args[0])
    return tuple(args)


def _irreps_lmax(text: str) -> int:
    return max(int(part.split("x")[1][:-1]) for part in text.split("+"))


def _count_scalars(text: str) -> int:
    return sum(int(part.split("x")[0]) for part in text.split("+") if part.endswith("x0e"))


def _name(value: Any) -> Any:
    if isinstance(value, FunctionRef):
        return value.__name__
    if isinstance(value, Record):
        return value.class_name
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Record):
        if value.class_name in ("Irreps", "Irrep", "_MulIr"):
            return irreps(value)
        return value.class_name
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return _name(value)


def hyperparameters(model: Record, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """`extract_config_mace_model`'s fields (plain types) plus per-layer details, from records."""
    interactions = model.attr("interactions").children()
    products = model.attr("products").children()
    readouts = model.attr("readouts").children()
    radial = model.attr("radial_embedding")
    basis = radial.attr("bessel_fn")
    last_readout = readouts[-1]
    heads = [str(h) for h in (model.attr("heads") or ["Default"])]
    mlp_irreps = (
        irreps(last_readout.attr("hidden_irreps")) if last_readout.has("hidden_irreps") else "1x0e"
    )
    gate = None
    if last_readout.has("non_linearity"):
        acts = last_readout.attr("non_linearity").attr("acts")
        acts = acts.children() if isinstance(acts, Record) else acts or []
        if acts and isinstance(acts[0], Record) and acts[0].has("f"):
            gate = _name(acts[0].attr("f"))
    transform = radial.attr("distance_transform")
    sh_irreps = irreps(model.attr("spherical_harmonics").attr("irreps_out"))
    hp: dict[str, Any] = {
        "r_max": float(state["r_max"]),
        "num_bessel": _num_basis(radial, basis),
        "num_polynomial_cutoff": int(radial.attr("cutoff_fn").attr("p")),
        "max_ell": _irreps_lmax(sh_irreps),
        "interaction_cls": interactions[-1].class_name,
        "interaction_cls_first": interactions[0].class_name,
        "num_interactions": int(state["num_interactions"]),
        "num_elements": int(state["atomic_numbers"].numel()),
        "hidden_irreps": irreps(products[0].attr("linear").attr("irreps_out")),
        "edge_irreps": _plain(model.attr("edge_irreps")),
        "MLP_irreps": f"{max(1, _count_scalars(mlp_irreps) // len(heads))}x0e",
        "gate": gate,
        "use_reduced_cg": bool(model.attr("use_reduced_cg", False)),
        "use_so3": bool(model.attr("use_so3", False)),
        "use_edge_irreps_first": bool(model.attr("use_edge_irreps_first", False)),
        "use_agnostic_product": bool(model.attr("use_agnostic_product", False)),
        "use_last_readout_only": bool(model.attr("use_last_readout_only", False)),
        "use_embedding_readout": model.has("embedding_readout"),
        "readout_cls": last_readout.class_name,
        "cueq_config": _plain(model.attr("cueq_config")),
        "avg_num_neighbors": float(interactions[0].attr("avg_num_neighbors")),
        "atomic_numbers": state["atomic_numbers"].tolist(),
        "correlation": _correlation(products[0]),
        "radial_type": RADIAL_TYPES.get(basis.class_name, basis.class_name),
        "embedding_specs": _plain(model.attr("embedding_specs")),
        "apply_cutoff": bool(model.attr("apply_cutoff", True)),
        "radial_MLP": [
            int(h) for h in (interactions[0].attr("conv_tp_weights").attr("hs") or [])[1:-1]
        ],
        "pair_repulsion": model.has("pair_repulsion_fn"),
        "distance_transform": None
        if transform is None
        else TRANSFORMS.get(_name(transform), _name(transform)),
        "heads": heads,
        "avg_num_neighbors_per_interaction": [
            float(i.attr("avg_num_neighbors")) for i in interactions
        ],
        "correlation_per_interaction": [_correlation(p) for p in products],
    }
    if not interactions[0].attr("conv_tp_weights").has("hs"):
        hp["radial_MLP_class"] = interactions[0].attr("conv_tp_weights").class_name
    hidden = hp["hidden_irreps"]
    last_out = irreps(products[-1].attr("linear").attr("irreps_out"))
    hp["keep_last_layer_irreps"] = (
        len(products) > 1 and _irreps_lmax(hidden) > 0 and last_out == hidden
    )
    hp["layers"] = [
        _layer(i, interaction, product, readouts[i] if i < len(readouts) else None)
        for i, (interaction, product) in enumerate(zip(interactions, products, strict=True))
    ]
    cst = interactions[0].attr("conv_tp_weights").attr("layer0")
    act = cst.attr("act") if isinstance(cst, Record) else None
    if isinstance(act, Record) and act.has("cst"):
        hp["radial_mlp_activation_cst"] = float(act.attr("cst"))
    return hp


def _num_basis(radial: Record, basis: Record) -> int:
    """Radial basis size: `out_dim` (mace >= 0.3.1), else the basis' own weights."""
    if radial.has("out_dim"):
        return int(radial.attr("out_dim"))
    for name in ("bessel_weights", "gaussian_weights", "n"):
        if basis.has(name):
            return int(basis.attr(name).numel())
    return int(basis.attr("num_basis"))


def _correlation(product: Record) -> int:
    """ν_max of a product block: one weight tensor per order below the highest, + weights_max."""
    contraction = product.attr("symmetric_contractions").attr("contractions").children()[0]
    return len(contraction.attr("weights").parameters_list()) + 1


def _layer(index: int, interaction: Record, product: Record, readout: Record | None) -> dict:
    conv_tp = interaction.attr("conv_tp")
    contraction = product.attr("symmetric_contractions")
    layer: dict[str, Any] = {
        "interaction_class": interaction.class_name,
        "avg_num_neighbors": float(interaction.attr("avg_num_neighbors")),
        "node_feats_irreps": irreps(interaction.attr("node_feats_irreps")),
        "target_irreps": irreps(interaction.attr("target_irreps")),
        "product_irreps_in": irreps(contraction.attr("irreps_in")),
        "product_irreps_out": irreps(contraction.attr("irreps_out")),
        "product_correlation": _correlation(product),
        "product_use_sc": bool(product.attr("use_sc", True)),
    }
    if isinstance(conv_tp, Record) and conv_tp.has("instructions"):
        layer["conv_tp_irreps_out"] = irreps(conv_tp.attr("irreps_out"))
        layer["conv_tp_instructions"] = [
            [int(a[0]), int(a[1]), int(a[2]), str(a[3]), bool(a[4])]
            for a in (ins.args for ins in conv_tp.attr("instructions"))
        ]
    mlp = interaction.attr("conv_tp_weights")
    if isinstance(mlp, Record) and mlp.has("hs"):
        layer["radial_mlp_hs"] = [int(h) for h in mlp.attr("hs")]
    skip = interaction.attr("skip_tp")
    if isinstance(skip, Record) and skip.has("irreps_in1"):
        layer["skip_tp_irreps_in1"] = irreps(skip.attr("irreps_in1"))
        layer["skip_tp_irreps_out"] = irreps(skip.attr("irreps_out"))
    if readout is not None:
        layer["readout_class"] = readout.class_name
        if readout.has("linear_1"):
            layer["readout_irreps"] = [
                irreps(readout.attr("linear_1").attr("irreps_in")),
                irreps(readout.attr("linear_1").attr("irreps_out")),
                irreps(readout.attr("linear_2").attr("irreps_out")),
            ]
        elif readout.has("linear"):
            layer["readout_irreps"] = [
                irreps(readout.attr("linear").attr("irreps_in")),
                irreps(readout.attr("linear").attr("irreps_out")),
            ]
    return layer


# --------------------------------------------------------------------------------- heads


def select_head(
    state: dict[str, torch.Tensor], index: int, num_heads: int, hp: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """The state dict of the single-head model equal to head `index` of a multi-head one.

    Per head: E0 row, scale/shift entry, the head's column of the linear readouts, and in the
    last (non-linear) readout the head's block of hidden channels (mace masks the others, see
    mace's `mask_head`). linear_2 was normalised by 1/√(num_heads·mlp) over all blocks; the
    single-head model normalises by 1/√mlp, so its weights are divided by √num_heads.
    """
    out = dict(state)
    mlp = _count_scalars(hp["MLP_irreps"])
    for key, value in state.items():
        if key == "atomic_energies_fn.atomic_energies" and value.dim() == 2:
            out[key] = value[index]
        elif key in ("scale_shift.scale", "scale_shift.shift") and value.numel() == num_heads:
            out[key] = value.reshape(-1)[index]
        elif key.startswith("readouts.") and key.endswith(".linear.weight"):
            out[key] = value.reshape(-1, num_heads)[:, index].contiguous()
        elif key.startswith("readouts.") and key.endswith(".linear_1.weight"):
            out[key] = value.reshape(-1, num_heads, mlp)[:, index].reshape(-1).contiguous()
        elif key.startswith("readouts.") and key.endswith(".linear_2.weight"):
            block = value.reshape(num_heads, mlp, num_heads)[index, :, index]
            out[key] = (block / math.sqrt(num_heads)).contiguous()
        elif key.startswith("readouts.") and value.numel() and "bias" in key:
            raise MacePickleError(f"multi-head readout with biases ({key}) is not supported")
    return out


# ---------------------------------------------------------------------------------- info


def is_mace_file(path: str | os.PathLike) -> bool:
    """A torch zip file whose pickle names mace-torch classes (cheap: reads data.pkl only)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            return bool(names) and b"mace.modules" in archive.read(names[0])
    except (OSError, zipfile.BadZipFile):
        return False
