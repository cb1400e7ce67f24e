"""Convert a mace-torch model file (a pickled module) into a mace-free file equimd can read.

Runs in the MACE peer venv (`bash benchmarks/peers/setup_peers.sh mace`):

    .peers/mace/bin/python benchmarks/peers/mace_export.py in.model out.pt [--drop-coupling-buffers]

The output is a plain `torch.save` of a dict holding only tensors and plain Python types, so
`torch.load(out.pt, weights_only=True)` works without mace-torch or e3nn installed:

    {
      "format": "mace-torch-state-dict",
      "format_version": 1,
      "mace_version": "0.3.16", "e3nn_version": "0.4.4", "torch_version": "2.9.1",
      "model_class": "ScaleShiftMACE" | "MACE",
      "dtype": "float64" | "float32",
      "hyperparameters": {...},     # extract_config_mace_model's fields as plain types, plus
                                    # per-layer details under "layers" (see `hyperparameters`)
      "state_dict": {name: tensor}, # model.state_dict(), detached, on CPU
      "dropped_keys": [name, ...],  # state-dict keys left out (see --drop-coupling-buffers)
    }

`--drop-coupling-buffers` leaves out the symmetric contractions' `U_matrix_*` buffers (the
generalized Clebsch-Gordan bases; they are a deterministic function of the irreps and the
correlation order and are the bulk of the file for models with vector outputs). equimd
recomputes them (`equimd.potentials.nn.contraction`); keep them when the model was built with
cuequivariance's reduced CG basis (`use_reduced_cg=True` with cuequivariance installed).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

# mace must be imported before e3nn with torch >= 2.6 and e3nn 0.4.4: mace sets
# TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, which e3nn 0.4.4 needs to load its constants.
import mace  # noqa: F401  isort: skip
import e3nn
import numpy as np
import torch
from e3nn import o3
from mace.__version__ import __version__ as mace_version
from mace.tools.scripts_utils import extract_config_mace_model

# e3nn 0.4.4's TorchScript codegen warns once per module under torch 2.9; harmless.
warnings.filterwarnings("ignore", message="The TorchScript type system doesn't support")

FORMAT = "mace-torch-state-dict"
FORMAT_VERSION = 1


def to_plain(value: Any) -> Any:
    """Irreps, classes, functions, arrays and tensors → str / list / float / int / None."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, o3.Irreps | o3.Irrep):
        return str(value)
    if isinstance(value, type):
        return value.__name__
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, np.ndarray | np.generic):
        return value.item() if np.ndim(value) == 0 else value.tolist()
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__  # activation functions: "silu", "tanh", ...
    return str(value)


def _correlation(product: torch.nn.Module) -> int:
    contraction = product.symmetric_contractions.contractions[0]
    return len(contraction.weights) + 1


def _layer_details(model: torch.nn.Module) -> list[dict[str, Any]]:
    """Irreps and constants of each interaction/product/readout, read off the modules."""
    layers = []
    for i, (interaction, product) in enumerate(
        zip(model.interactions, model.products, strict=True)
    ):
        conv_tp = interaction.conv_tp
        layer = {
            "interaction_class": type(interaction).__name__,
            "avg_num_neighbors": float(interaction.avg_num_neighbors),
            "node_feats_irreps": str(interaction.node_feats_irreps),
            "edge_attrs_irreps": str(interaction.edge_attrs_irreps),
            "edge_feats_irreps": str(interaction.edge_feats_irreps),
            "target_irreps": str(interaction.target_irreps),
            "hidden_irreps": str(interaction.hidden_irreps),
            "linear_up_irreps_out": str(interaction.linear_up.irreps_out),
            "conv_tp_irreps_out": str(conv_tp.irreps_out),
            "conv_tp_instructions": [
                [ins.i_in1, ins.i_in2, ins.i_out, ins.connection_mode, bool(ins.has_weight)]
                for ins in conv_tp.instructions
            ],
            "radial_mlp_hs": list(interaction.conv_tp_weights.hs),
            "skip_tp_irreps_in1": str(interaction.skip_tp.irreps_in1),
            "skip_tp_irreps_out": str(interaction.skip_tp.irreps_out),
            "product_irreps_in": str(product.symmetric_contractions.irreps_in),
            "product_irreps_out": str(product.symmetric_contractions.irreps_out),
            "product_correlation": _correlation(product),
            "product_use_sc": bool(product.use_sc),
        }
        if i < len(model.readouts):
            readout = model.readouts[i]
            layer["readout_class"] = type(readout).__name__
            if hasattr(readout, "linear_1"):
                layer["readout_irreps"] = [
                    str(readout.linear_1.irreps_in),
                    str(readout.linear_1.irreps_out),
                    str(readout.linear_2.irreps_out),
                ]
                act = readout.non_linearity.acts[0]
                layer["readout_activation"] = to_plain(getattr(act, "f", act))
                layer["readout_activation_cst"] = float(getattr(act, "cst", 1.0))
            else:
                layer["readout_irreps"] = [
                    str(readout.linear.irreps_in),
                    str(readout.linear.irreps_out),
                ]
        layers.append(layer)
    return layers


def hyperparameters(model: torch.nn.Module) -> dict[str, Any]:
    """`extract_config_mace_model(model)` as plain types, plus per-layer details.

    Also works for plain `MACE` (no scale/shift: `atomic_inter_scale`=1, `_shift`=0).
    """
    if hasattr(model, "scale_shift"):
        config = extract_config_mace_model(model)
        if "error" in config:
            raise ValueError(config["error"])
    else:
        # extract_config_mace_model refuses non-ScaleShift models: present it a view of the
        # model with an identity scale/shift, read nothing else from the wrapper.
        class _Identity(torch.nn.Module):
            scale = torch.tensor(1.0)
            shift = torch.tensor(0.0)

        cls = type("ScaleShiftMACE", (type(model),), {})
        view = cls.__new__(cls)
        view.__dict__.update(model.__dict__)
        view._modules = dict(model._modules, scale_shift=_Identity())
        config = extract_config_mace_model(view)
    config = to_plain(config)
    config["avg_num_neighbors_per_interaction"] = [
        float(interaction.avg_num_neighbors) for interaction in model.interactions
    ]
    config["correlation_per_interaction"] = [_correlation(p) for p in model.products]
    hidden = o3.Irreps(config["hidden_irreps"])
    last_out = o3.Irreps(str(model.products[-1].linear.irreps_out))
    # MACE(keep_last_layer_irreps=True) keeps all hidden irreps in the last layer; by default
    # the last product block outputs only the scalars of hidden_irreps.
    config["keep_last_layer_irreps"] = (
        len(model.products) > 1 and hidden.lmax > 0 and last_out == hidden
    )
    config["layers"] = _layer_details(model)
    # e3nn normalize2mom constant of the radial MLP's SiLU (computed at construction in the
    # default dtype of that moment: float64 and float32 differ in the 8th digit).
    config["radial_mlp_activation_cst"] = float(
        model.interactions[0].conv_tp_weights.layer0.act.cst
    )
    return config


def export_model(model: torch.nn.Module, drop_coupling_buffers: bool = False) -> dict[str, Any]:
    """The exported dict (see module docstring) for a loaded mace-torch model."""
    state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    dropped = []
    if drop_coupling_buffers:
        dropped = [k for k in state_dict if ".U_matrix_" in k]
        for k in dropped:
            del state_dict[k]
    dtype = next(iter(model.parameters())).dtype
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mace_version": mace_version,
        "e3nn_version": e3nn.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "model_class": type(model).__name__,
        "dtype": str(dtype).replace("torch.", ""),
        "hyperparameters": hyperparameters(model),
        "state_dict": state_dict,
        "dropped_keys": dropped,
    }


def save_export(exported: dict[str, Any], path: str) -> None:
    """torch.save, then check the file loads with weights_only=True."""
    torch.save(exported, path)
    torch.load(path, weights_only=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="mace-torch .model file (pickled module)")
    parser.add_argument("output", help="output .pt file")
    parser.add_argument(
        "--drop-coupling-buffers",
        action="store_true",
        help="leave out the U_matrix_* buffers (recomputed by equimd)",
    )
    args = parser.parse_args(argv)
    model = torch.load(args.model, map_location="cpu", weights_only=False)
    exported = export_model(model, drop_coupling_buffers=args.drop_coupling_buffers)
    save_export(exported, args.output)
    n_params = sum(v.numel() for v in exported["state_dict"].values())
    print(
        f"{args.model} ({exported['model_class']}, {exported['dtype']}, "
        f"{n_params} state-dict numbers) -> {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
