"""Import a mace-torch model: `equimd import mace MODEL.pt -o checkpoint.pt`.

mace-torch `.model` files are pickled modules that need mace-torch (and its e3nn 0.4.4) to load,
so the conversion has two steps (docs/mace.md):

1. in the mace-torch environment, `benchmarks/peers/mace_export.py in.model out.pt` writes a
   mace-free file (format "mace-torch-state-dict": hyperparameters, per-layer irreps and the
   state dict as plain types; see benchmarks/peers/README.md);
2. `import_mace_file(out.pt, checkpoint.pt)` (here) builds the equivalent equimd `MACE` and
   writes an equimd checkpoint (`equimd.potentials.models.serialization`).

The e3nn weights (`o3.Linear`, `FullyConnectedTensorProduct`, `FullyConnectedNet`) have the same
layout in e3nn 0.4.4 and 0.6 and are copied verbatim; the product-basis weights go through
`SymmetricContraction.load_mace_weights` (and the file's coupling bases `U_matrix_*` too, when
present). Every per-layer irreps and convolution instruction recorded in the file is checked
against the equimd model, and every state-dict entry must be used or known to be redundant:
a model with an option equimd does not implement is refused with the option named, never
imported approximately.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from e3nn import o3
from torch import Tensor

from equimd.potentials.models.mace import MACE
from equimd.potentials.models.mace_options import copy_option_buffers, radial_options
from equimd.potentials.models.mace_pickle import MaceImportError
from equimd.potentials.models.mace_records import EXPORT_FORMAT, read_mace_file
from equimd.potentials.nn.convolution import convolution_irreps
from equimd.potentials.nn.dtype import default_dtype
from equimd.potentials.nn.mace_blocks import GATES, INTERACTION_CLASSES

EXPORT_FORMAT_VERSION = 1
MODEL_CLASSES = ("ScaleShiftMACE", "MACE")
READOUT_CLASSES = ("NonLinearReadoutBlock",)

# State-dict entries that carry no information beyond the hyperparameters (checked separately
# where they could disagree) or are e3nn 0.4.4 code-generation constants.
_REDUNDANT = re.compile(
    r"(\._compiled_main|\.output_mask$|_zeroed$|^r_max$|^num_interactions$|^atomic_numbers$"
    r"|^radial_embedding\.(bessel_fn\.(r_max|prefactor)|cutoff_fn\.(p|r_max))$)"
)


def read_mace_export(
    path: str | os.PathLike,
    head: str | None = None,
    architecture: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Load a mace-torch `.model` file, training checkpoint (with `architecture`, a `.model` of
    the same run) or converted file as the export-format dict (`mace_records.read_mace_file`);
    no mace-torch needed, no code in the file runs. head: of a multi-head model."""
    path = Path(path)
    if not path.is_file():
        raise MaceImportError(f"{path}: no such file")
    record = read_mace_file(path, head=head, architecture=architecture)
    if int(record.get("format_version", 0)) > EXPORT_FORMAT_VERSION:
        raise MaceImportError(
            f"{path}: export format version {record['format_version']} is newer than this "
            f"equimd reads ({EXPORT_FORMAT_VERSION})"
        )
    return record


def mace_hyperparameters(record: dict[str, Any]) -> dict[str, Any]:
    """equimd `MACE` hyperparameters (incl. `species`) of an exported mace model.

    Raises `MaceImportError` naming every mace option that equimd does not implement.
    """
    model_class = record.get("model_class")
    if model_class not in MODEL_CLASSES:
        raise MaceImportError(
            f"mace model class {model_class!r} is not supported (supported: {list(MODEL_CLASSES)})"
        )
    hp = record["hyperparameters"]
    problems = []

    def unsupported(name: str, allowed: Any) -> None:
        problems.append(f"{name}={hp.get(name)!r} (supported: {allowed})")

    for name in ("interaction_cls_first", "interaction_cls"):
        if hp.get(name) not in INTERACTION_CLASSES:
            unsupported(name, list(INTERACTION_CLASSES))
    if hp.get("readout_cls", "NonLinearReadoutBlock") not in READOUT_CLASSES:
        unsupported("readout_cls", list(READOUT_CLASSES))
    options = radial_options(hp, problems)
    heads = hp.get("heads") or ["Default"]
    if len(heads) != 1:
        problems.append(
            f"heads={heads!r} (one head only: select one with mace-torch's "
            "`mace_select_head` before exporting)"
        )
    for name in (
        "use_so3",
        "use_agnostic_product",
        "use_last_readout_only",
        "use_embedding_readout",
    ):
        if bool(hp.get(name, False)):
            unsupported(name, "False")
    for name in ("embedding_specs", "edge_irreps"):
        if hp.get(name) not in (None, "None", "", {}):
            unsupported(name, "None")
    if _cueq_enabled(hp.get("cueq_config")):
        problems.append(
            f"cueq_config={hp.get('cueq_config')!r} (convert the model to e3nn first with "
            "mace-torch's `mace_cueq_to_e3nn`)"
        )
    gate = None if hp.get("gate") in (None, "None") else hp.get("gate")
    if gate not in GATES:
        unsupported("gate", [g for g in GATES if g])
    averages = [float(a) for a in hp.get("avg_num_neighbors_per_interaction") or []]
    if averages and max(averages) != min(averages):
        unsupported("avg_num_neighbors_per_interaction", "the same value for every interaction")
    if problems:
        raise MaceImportError(
            "this mace-torch model uses options equimd's MACE does not implement: "
            + "; ".join(problems)
        )
    correlations = hp.get("correlation_per_interaction") or hp["correlation"]
    if isinstance(correlations, list) and len(set(correlations)) == 1:
        correlations = int(correlations[0])
    return {
        "species": [int(z) for z in hp["atomic_numbers"]],
        "r_max": float(hp["r_max"]),
        "num_bessel": int(hp["num_bessel"]),
        "num_polynomial_cutoff": int(hp["num_polynomial_cutoff"]),
        "max_ell": int(hp["max_ell"]),
        "hidden_irreps": str(o3.Irreps(hp["hidden_irreps"])),
        "correlation": correlations,
        "num_interactions": int(hp["num_interactions"]),
        "MLP_irreps": str(o3.Irreps(hp["MLP_irreps"]).simplify()),
        "radial_MLP": [int(h) for h in hp["radial_MLP"]],
        "interaction_first": hp["interaction_cls_first"],
        "interaction": hp["interaction_cls"],
        "avg_num_neighbors": averages[0] if averages else float(hp["avg_num_neighbors"]),
        "gate": gate,
        "keep_last_layer_irreps": bool(hp.get("keep_last_layer_irreps", False)),
        "apply_cutoff": bool(hp.get("apply_cutoff", True)),
        **options,
    }


def mace_model_from_export(record: dict[str, Any], dtype: torch.dtype | None = None) -> MACE:
    """The equimd `MACE` equal to an exported mace-torch model (eval mode).

    record: the dict of `read_mace_export`. dtype: of the returned model (default: the mace
    model's). The model is built in float64 (exact constants), weights are copied, then it is
    cast to `dtype`. Its convolutions use the default backend; choose another with
    `equimd.potentials.nn.convolution.apply_convolution_backend` (same numbers).
    """
    hyperparameters = mace_hyperparameters(record)
    state = {k: v for k, v in record["state_dict"].items()}
    with default_dtype(torch.float64):
        model = MACE(**hyperparameters)
    permutations = _check_layers(model, record["hyperparameters"])
    _check_constants(model, record, state)
    used = _copy_weights(model, state, record.get("model_class") == "ScaleShiftMACE", permutations)
    used |= copy_option_buffers(model, state)
    left = sorted(k for k in state if k not in used and not _REDUNDANT.search(k))
    left = [k for k in left if not (state[k].numel() == 0 and k.endswith((".bias", ".weight")))]
    if left:
        raise MaceImportError(
            f"the mace state dict has entries equimd's MACE has no place for: {left[:8]}"
            + (f" and {len(left) - 8} more" if len(left) > 8 else "")
        )
    _warn_if_float32_constants(record)
    target = dtype or getattr(torch, str(record.get("dtype", "float64")))
    return model.to(target).eval()


def import_mace_file(
    path: str | os.PathLike,
    output_checkpoint: str | os.PathLike,
    dtype: str | None = None,
    head: str | None = None,
    architecture: str | os.PathLike | None = None,
) -> Path:
    """Convert a mace-torch `.model` file, training checkpoint (+ `architecture`, a `.model` of
    the same architecture) or converted file to an equimd checkpoint.

    dtype: "float32" | "float64" | None (the mace model's). head: of a multi-head model
    (default `mace_records.default_head`). Returns the checkpoint path.
    """
    from equimd.potentials.models.serialization import save_model

    record = read_mace_export(path, head=head, architecture=architecture)
    try:
        model = mace_model_from_export(record, getattr(torch, dtype) if dtype else None)
    except MaceImportError as error:
        raise MaceImportError(f"{path}: {error}") from error
    output_checkpoint = Path(output_checkpoint)
    save_model(
        model,
        output_checkpoint,
        source={
            "format": EXPORT_FORMAT,
            "file": str(path),
            "mace_version": record.get("mace_version"),
            "model_class": record.get("model_class"),
            "head": record["hyperparameters"].get("heads", [None])[0],
        },
    )
    return output_checkpoint


# ---------------------------------------------------------------------------------- helpers


def _cueq_enabled(config: Any) -> bool:
    if config in (None, "None", "", {}):
        return False
    if isinstance(config, dict):
        return bool(config.get("enabled", False))
    return "enabled=True" in str(config).replace(" ", "")


def _check_layers(model: MACE, hp: dict[str, Any]) -> list[Tensor | None]:
    """Compare every per-layer irreps/instruction the exporter recorded with the equimd model.

    Returns, per layer, the column permutation of the radial MLP's last weight that maps mace's
    convolution-weight layout onto equimd's (None: same layout). mace-torch sorts the
    convolution instructions by output irrep, equimd keeps them in generation order (as
    NequIP): same paths, per-edge weight blocks in another order.
    """
    layers = hp.get("layers") or [{} for _ in model.interactions]
    permutations: list[Tensor | None] = []
    if len(layers) != len(model.interactions):
        raise MaceImportError(
            f"the file describes {len(layers)} layers, num_interactions is {len(model.interactions)}"
        )
    for index, (layer, interaction, product, readout) in enumerate(
        zip(layers, model.interactions, model.products, model.readouts, strict=True)
    ):
        conv_out, instructions = convolution_irreps(
            interaction.irreps_node,
            interaction.convolution.irreps_sh,
            interaction.irreps_target,
        )
        readout_irreps = (
            [readout.linear_1.irreps_in, readout.linear_1.irreps_out, readout.linear_2.irreps_out]
            if hasattr(readout, "linear_1")
            else [readout.linear.irreps_in, readout.linear.irreps_out]
        )
        ours = {
            "interaction_class": interaction.mace_class,
            "node_feats_irreps": interaction.irreps_node,
            "target_irreps": interaction.irreps_target,
            "conv_tp_irreps_out": conv_out,
            "conv_tp_instructions": sorted([list(ins) for ins in instructions]),
            "radial_mlp_hs": list(interaction.radial_weights.hs),
            "skip_tp_irreps_in1": interaction.skip_tp.irreps_in1,
            "skip_tp_irreps_out": interaction.skip_tp.irreps_out,
            "product_irreps_in": product.irreps_in,
            "product_irreps_out": product.irreps_out,
            "product_correlation": product.symmetric_contraction.correlation,
            "readout_irreps": [str(irreps) for irreps in readout_irreps],
        }
        for key, value in ours.items():
            if key not in layer:
                continue
            expected = layer[key]
            if key == "conv_tp_instructions":
                expected = sorted(expected)
            if isinstance(value, o3.Irreps):
                same = value == o3.Irreps(expected)
            else:
                same = value == expected
            if not same:
                raise MaceImportError(
                    f"layer {index}: {key} is {expected!r} in the mace model but {value!r} "
                    "in equimd's MACE; this mace model is built differently from the ones "
                    "equimd implements"
                )
        if (
            "avg_num_neighbors" in layer
            and float(layer["avg_num_neighbors"]) != interaction.avg_num_neighbors
        ):
            raise MaceImportError(f"layer {index}: avg_num_neighbors differs from the model's")
        # mace-torch's order (tp_out_irreps_with_instructions): sorted by output irrep
        theirs = layer.get("conv_tp_instructions") or sorted(instructions, key=lambda ins: ins[2])
        permutations.append(
            _instruction_permutation(
                [tuple(ins) for ins in instructions],
                [tuple(ins) for ins in theirs],
                interaction.irreps_node,
            )
        )
    return permutations


def _instruction_permutation(
    ours: list[tuple], theirs: list[tuple], irreps_node: o3.Irreps
) -> Tensor | None:
    """Index `p` with weights_ours = weights_theirs[..., p] for two orders of the same "uvu"
    instructions (i_in1, i_in2, i_out, ...): one block of mul(i_in1) weights per instruction."""
    if ours == theirs:
        return None
    blocks = []
    start = 0
    starts = {}
    for ins in theirs:
        size = irreps_node[ins[0]].mul
        starts[ins[:3]] = (start, size)
        start += size
    for ins in ours:
        first, size = starts[ins[:3]]
        blocks.append(torch.arange(first, first + size))
    return torch.cat(blocks)


def _check_constants(model: MACE, record: dict[str, Any], state: dict[str, Tensor]) -> None:
    """The buffers that duplicate hyperparameters agree with them."""
    hp = record["hyperparameters"]
    checks = {
        "r_max": float(hp["r_max"]),
        "radial_embedding.bessel_fn.r_max": float(hp["r_max"]),
        "radial_embedding.cutoff_fn.r_max": float(hp["r_max"]),
        "radial_embedding.cutoff_fn.p": float(hp["num_polynomial_cutoff"]),
        "num_interactions": float(hp["num_interactions"]),
        "radial_embedding.bessel_fn.prefactor": float(
            getattr(model.radial_embedding.bessel_fn, "prefactor", 0.0)
        ),
    }
    for key, expected in checks.items():
        if key not in state:
            continue
        # a float32 mace model stores these constants rounded to float32
        value = state[key]
        relative = max(1e-12, 4 * torch.finfo(value.dtype).eps) if value.is_floating_point() else 0
        if abs(float(value) - expected) > relative * max(1.0, abs(expected)):
            raise MaceImportError(f"state dict {key} = {float(value)}, expected {expected}")
    if "atomic_numbers" in state and state["atomic_numbers"].tolist() != model.species:
        raise MaceImportError(
            f"state dict atomic_numbers {state['atomic_numbers'].tolist()} differ from the "
            f"hyperparameters' {model.species}"
        )


def _copy_weights(
    model: MACE,
    state: dict[str, Tensor],
    scale_shift: bool,
    permutations: list[Tensor | None],
) -> set[str]:
    """Copy mace's state dict into `model`; return the mace keys used.

    permutations[i]: column order of interaction i's last radial-MLP weight (`_check_layers`).
    """
    used: set[str] = set()

    def take(key: str) -> Tensor:
        if key not in state:
            raise MaceImportError(f"the mace state dict has no entry {key!r}")
        used.add(key)
        return state[key]

    def copy(target: Tensor, key: str, columns: Tensor | None = None) -> None:
        source = take(key)
        if columns is not None and source.dim() == 2 and source.shape[1] == columns.numel():
            source = source.index_select(1, columns)
        if source.numel() != target.numel():
            raise MaceImportError(
                f"{key}: {tuple(source.shape)} in the mace model, equimd expects {tuple(target.shape)}"
            )
        target.copy_(source.reshape(target.shape))

    with torch.no_grad():
        copy(model.node_embedding.weight, "node_embedding.linear.weight")
        if hasattr(model.radial_embedding.bessel_fn, "bessel_weights"):
            copy(
                model.radial_embedding.bessel_fn.bessel_weights,
                "radial_embedding.bessel_fn.bessel_weights",
            )
        for i, interaction in enumerate(model.interactions):
            prefix = f"interactions.{i}."
            copy(interaction.linear_up.weight, prefix + "linear_up.weight")
            radial_layers = list(interaction.radial_weights)
            for k, layer in enumerate(radial_layers):
                last = k == len(radial_layers) - 1
                columns = permutations[i] if last else None
                copy(layer.weight, prefix + f"conv_tp_weights.layer{k}.weight", columns)
            copy(interaction.linear.weight, prefix + "linear.weight")
            copy(interaction.skip_tp.weight, prefix + "skip_tp.weight")
        for i, product in enumerate(model.products):
            prefix = f"products.{i}.symmetric_contractions."
            try:
                product.symmetric_contraction.load_mace_weights(state, prefix)
            except KeyError as error:
                raise MaceImportError(f"the mace state dict has no entry {error}") from error
            except ValueError as error:
                raise MaceImportError(
                    f"products.{i}: {error} (a model built with use_reduced_cg=True and "
                    "cuequivariance uses another coupling basis, which equimd does not implement)"
                ) from error
            used.update(k for k in state if k.startswith(prefix))
            copy(product.linear.weight, f"products.{i}.linear.weight")
        for i, readout in enumerate(model.readouts):
            prefix = f"readouts.{i}."
            if hasattr(readout, "linear_1"):
                copy(readout.linear_1.weight, prefix + "linear_1.weight")
                copy(readout.linear_2.weight, prefix + "linear_2.weight")
            else:
                copy(readout.linear.weight, prefix + "linear.weight")
        e0 = take("atomic_energies_fn.atomic_energies").reshape(-1)
        scale = take("scale_shift.scale").reshape(-1)[0] if scale_shift else torch.tensor(1.0)
        shift = take("scale_shift.shift").reshape(-1)[0] if scale_shift else torch.tensor(0.0)
        model.scale_shift.set_statistics(e0.tolist(), float(scale), float(shift))
    return used


def _warn_if_float32_constants(record: dict[str, Any]) -> None:
    """e3nn 0.4.4 computed the SiLU normalisation in the default dtype: a float64 mace model
    built under float32 default dtype differs from equimd's (float64) constant at 1e-8."""
    cst = record["hyperparameters"].get("radial_mlp_activation_cst")
    exact = 1.6791767923989418  # e3nn normalize2mom(silu), float64
    if cst is not None and record.get("dtype") == "float64" and abs(float(cst) - exact) > 1e-12:
        warnings.warn(
            f"the mace model's SiLU normalisation constant {cst!r} was computed in float32; "
            f"equimd uses {exact!r}: energies agree to ~1e-8 relative, not to float64 rounding",
            stacklevel=3,
        )
