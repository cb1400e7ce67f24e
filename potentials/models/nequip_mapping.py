"""nequip ≥ 0.7 `NequIPGNNModel` weights → equimd `NequIP` (exact up to float64 rounding).

What differs between the two and how it maps (docs/nequip.md):

* type embedding `nn.Embedding(types, F)` → equimd's linear on one-hot species (rows = types);
* the self-connection's second input is that embedding, not the one-hot: a function of the
  species only, so sc(h, E[Z]) = Σ_v W[u,v,w] h_u E[Z,v] becomes a per-species linear map
  (equimd's one-hot self-connection) — none in the first layer;
* Bessel basis 2/r_max · sin(π w_n r/r_max)/r (sinc form × 2π/r_max²) vs equimd's
  √(2/r_max) sin(k_n r)/r: the constant goes into the radial MLP's first layer, k_n = π w_n/r_max;
* radial MLP: `ScalarLinearLayer` (x @ W·α, plain SiLU) vs e3nn `FullyConnectedNet`
  (x @ W/√fan_in, SiLU normalised by a constant c): W_e = W·α·√fan_in (/k, /c) per layer;
* e3nn linears and tensor products differ only in how irreps are ordered and merged (nequip
  keeps its own order of the hidden irreps, equimd sorts them; nequip simplifies the
  convolution output): weights are moved channel by channel through labels (`_Space`);
* gates through SiLU (even) / tanh (odd), last layer scalars only, a linear or one-hidden-layer
  SiLU readout,
  per-type scales (equimd `per_species_energy_scales`) and shifts (equimd E0s).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from e3nn import o3
from torch import Tensor

from equimd.checks import atomic_number
from equimd.errors import EquimdError
from equimd.potentials.models.nequip import NequIP, hidden_irreps
from equimd.potentials.nn.dtype import default_dtype


class NequipImportError(EquimdError, ValueError):
    """A file that is not a nequip model, or a nequip option equimd does not implement (the
    message names it)."""



MODEL_TARGETS = ("nequip.model.NequIPGNNModel",)
# config keys and the values equimd implements (None: any value, read elsewhere)
_SUPPORTED: dict[str, Any] = {
    "_target_": None, "seed": None, "model_dtype": None, "type_names": None, "r_max": None,
    "num_layers": None, "l_max": None, "parity": None, "num_features": None,
    "type_embed_num_features": None, "radial_mlp_depth": None, "radial_mlp_width": None,
    "num_bessels": None, "bessel_trainable": None, "polynomial_cutoff_p": None,
    "avg_num_neighbors": None, "per_type_energy_scales": None, "per_type_energy_shifts": None,
    "per_type_energy_scales_trainable": None, "per_type_energy_shifts_trainable": None,
    "convnet_resnet": None, "do_derivatives": None, "compile_mode": None,
    "readout_mlp_hidden_layers_depth": (0, 1), "readout_mlp_hidden_layers_width": None,
    "readout_mlp_nonlinearity": None, "per_edge_type_cutoff": (None,), "pair_potential": (None,),
    "categorical_graph_field_embed": (None,), "convnet_sc": (True,), "learnable_shift": (False,),
    "convnet_nonlinearity_type": ("gate",),
    "convnet_nonlinearity_scalars": ({"e": "silu", "o": "tanh"},),
    "convnet_nonlinearity_gates": ({"e": "silu", "o": "tanh"},),
}
_WHY = {
    "per_edge_type_cutoff": "equimd has one cutoff for all pairs",
    "pair_potential": "no ZBL/pair term in equimd's NequIP",
    "readout_mlp_hidden_layers_depth": "equimd's readout has at most one hidden layer",
}


def nequip_hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    """equimd `NequIP` hyperparameters of a nequip model config; refuses options by name."""
    target = config.get("_target_")
    if target not in MODEL_TARGETS:
        raise NequipImportError(f"model {target!r} is not supported (only {MODEL_TARGETS})")
    for key, value in config.items():
        if key not in _SUPPORTED:
            raise NequipImportError(f"nequip option {key}={value!r} is not supported")
        allowed = _SUPPORTED[key]
        if allowed is not None and value not in allowed:
            why = f" ({_WHY[key]})" if key in _WHY else ""
            raise NequipImportError(
                f"nequip option {key}={value!r} is not supported (supported: "
                f"{', '.join(repr(a) for a in allowed)}){why}"
            )
    l_max = int(config.get("l_max", 1))
    features = config.get("num_features", 32)
    if isinstance(features, list):
        if len(features) != l_max + 1:
            raise NequipImportError(f"num_features={features} needs l_max + 1 = {l_max + 1} counts")
        features = [int(f) for f in features]
    else:
        features = int(features)
    embed = config.get("type_embed_num_features")
    average = config.get("avg_num_neighbors")
    per_type = isinstance(average, dict)
    if per_type and set(average) != set(config["type_names"]):
        raise NequipImportError(f"avg_num_neighbors={average!r} does not name every type")
    if not per_type and not isinstance(average, int | float):
        raise NequipImportError(
            f"nequip option avg_num_neighbors={average!r} is not supported (a number or one "
            "number per type)"
        )
    readout_depth = int(config.get("readout_mlp_hidden_layers_depth", 0))
    readout_activation = config.get("readout_mlp_nonlinearity", "silu")
    if readout_depth and readout_activation != "silu":
        raise NequipImportError(
            f"nequip option readout_mlp_nonlinearity={readout_activation!r} is not supported "
            "(supported: 'silu')"
        )
    scalars = features[0] if isinstance(features, list) else features
    readout_width = int(config.get("readout_mlp_hidden_layers_width") or scalars)
    species = []
    for name in config["type_names"]:
        try:
            species.append(atomic_number(name))
        except Exception:
            raise NequipImportError(
                f"type name {name!r} is not a chemical symbol (equimd maps species by element)"
            ) from None
    return dict(
        species=species,
        r_max=float(config["r_max"]),
        l_max=l_max,
        num_features=features,
        num_layers=int(config.get("num_layers", 4)),
        num_bessel=int(config.get("num_bessels", 8)),
        polynomial_p=int(config.get("polynomial_cutoff_p", 6)),
        parity=bool(config.get("parity", True)),
        sh_parity=-1,
        trainable_bessel=bool(config.get("bessel_trainable", False)),
        radial_mlp_hidden=[int(config.get("radial_mlp_width", 128))]
        * int(config.get("radial_mlp_depth", 1)),
        avg_num_neighbors=1.0 if per_type else float(average),
        per_species_avg_num_neighbors=per_type,
        resnet=bool(config.get("convnet_resnet", False)),
        gate_activation="silu",
        first_layer_self_connection=False,
        last_layer_scalars_only=True,
        readout_hidden_features=readout_width if readout_depth else 0,
        readout_activation="silu" if readout_depth else None,
        per_species_energy_scales=True,
        type_embed_features=int(embed) if embed is not None else None,
    )


class _Space:
    """The channels of a feature vector as labelled blocks [(mul, irrep, key)] in layout order;
    a channel's label is (key, u). Two models' weights are matched through the labels."""

    def __init__(self, blocks: list[tuple[int, o3.Irrep, Any]]) -> None:
        self.blocks = [(int(mul), o3.Irrep(ir), key) for mul, ir, key in blocks if mul > 0]

    def sorted(self) -> _Space:  # e3nn's Irreps.sort: stable, by irrep
        order = sorted(range(len(self.blocks)), key=lambda i: (self.blocks[i][1], i))
        return _Space([self.blocks[i] for i in order])

    def labels(self, irreps: o3.Irreps) -> list[list[tuple[Any, int]]]:
        """Per block of `irreps` (the module's, possibly merged), its channels' labels."""
        flat = [(ir, (key, u)) for mul, ir, key in self.blocks for u in range(mul)]
        out, start = [], 0
        for mul, ir in o3.Irreps(irreps):
            chunk = flat[start : start + mul]
            if len(chunk) != mul or any(c_ir != ir for c_ir, _ in chunk):
                raise NequipImportError(f"irreps {irreps} do not match the expected layout")
            out.append([label for _, label in chunk])
            start += mul
        if start != len(flat):
            raise NequipImportError(f"irreps {irreps} do not cover the expected layout")
        return out


def _gate_space(irreps_prev: o3.Irreps, irreps_sh: o3.Irreps, hidden: o3.Irreps):
    """(pre-gate space as e3nn's Gate orders it, output space, scalars, gates, gated)."""
    reachable = {ir for _, a in irreps_prev for _, b in irreps_sh for ir in a * b}
    scalars = [(m, ir) for m, ir in hidden if ir.l == 0 and ir in reachable]
    gated = [(m, ir) for m, ir in hidden if ir.l > 0 and ir in reachable]
    gate_ir = o3.Irrep("0e") if o3.Irrep("0e") in reachable else o3.Irrep("0o")
    blocks = [(m, ir, ("s", ir)) for m, ir in scalars] + [
        (m, gate_ir, ("g", ir)) for m, ir in gated
    ] + [(m, ir, ("v", ir)) for m, ir in gated]
    out = _Space([(m, ir, ("h", ir)) for m, ir in scalars + gated])
    return _Space(blocks).sorted(), out


def _conv_space(irreps_in: _Space, irreps_sh: o3.Irreps, target: set) -> tuple[_Space, list]:
    """Convolution output (sorted, as nequip and equimd) and instruction keys in order."""
    blocks, keys = [], []
    for mul, ir_in, key_in in irreps_in.blocks:
        for _, ir_sh in irreps_sh:
            for ir_out in ir_in * ir_sh:
                if ir_out in target:
                    blocks.append((mul, ir_out, ("c", key_in, ir_sh, ir_out)))
                    keys.append((key_in, ir_sh, ir_out, mul))
    return _Space(blocks).sorted(), keys


def _dense_linear(linear: o3.Linear, weight: Tensor, labels_in, labels_out) -> dict:
    """{(label_in, label_out): path_weight · W[u, w]} of an e3nn Linear's flat weights."""
    dense, offset = {}, 0
    for ins in linear.instructions:
        mul_in, mul_out = ins.path_shape
        block = weight[offset : offset + mul_in * mul_out].reshape(mul_in, mul_out)
        offset += mul_in * mul_out
        for u, a in enumerate(labels_in[ins.i_in]):
            for w, b in enumerate(labels_out[ins.i_out]):
                dense[(a, b)] = ins.path_weight * block[u, w]
    return dense


def _fill_linear(linear: o3.Linear, dense: dict, labels_in, labels_out) -> Tensor:
    weight = torch.zeros(linear.weight_numel, dtype=torch.float64)
    offset = 0
    for ins in linear.instructions:
        mul_in, mul_out = ins.path_shape
        block = weight[offset : offset + mul_in * mul_out].view(mul_in, mul_out)
        offset += mul_in * mul_out
        for u, a in enumerate(labels_in[ins.i_in]):
            for w, b in enumerate(labels_out[ins.i_out]):
                block[u, w] = dense.get((a, b), 0.0) / ins.path_weight
    return weight


def nequip_model_from_record(record: dict[str, Any], dtype: torch.dtype | None = None) -> NequIP:
    """The equimd `NequIP` equal to a nequip model (`nequip_import.read_nequip_file`)."""
    config, state = record["config"], {k: v.double() for k, v in record["state"].items()}
    hyper = nequip_hyperparameters(config)
    with default_dtype(torch.float64):
        model = NequIP(**hyper)
    target = {k: v.clone() for k, v in model.state_dict().items()}
    used: set[str] = set()

    def take(key: str) -> Tensor:
        if key not in state:
            raise NequipImportError(f"weight {key} missing from the nequip file")
        used.add(key)
        return state[key]

    n_types, r_max = model.num_species, hyper["r_max"]
    counts = hyper["num_features"]
    counts = counts if isinstance(counts, list) else [counts] * (hyper["l_max"] + 1)
    features = counts[0]  # scalars
    embed = take("type_embed.embed_module.weight")  # [types, F]
    embedding_in = [[("z", z) for z in range(n_types)]]
    width = embed.shape[1]
    embedding_out = [[(("h", o3.Irrep("0e")), u) for u in range(width)]]
    dense = {(("z", z), (("h", o3.Irrep("0e")), u)): embed[z, u]
             for z in range(n_types) for u in range(width)}
    target["embedding.weight"] = _fill_linear(model.embedding, dense, embedding_in, embedding_out)

    # radial basis: equimd = k · nequip with k = √(2/r_max) / (2/r_max)
    bessel = take("bessel_encode.bessel_weights").reshape(-1)
    target["radial_embedding.bessel_fn.bessel_weights"] = math.pi * bessel / r_max
    basis_ratio = math.sqrt(2.0 / r_max) / (2.0 / r_max)

    irreps_sh = o3.Irreps.spherical_harmonics(hyper["l_max"])
    parities = (1, -1) if hyper["parity"] else None  # nequip's own order of the hidden irreps
    hidden_nequip = o3.Irreps(
        [
            (counts[degree], (degree, p))
            for degree in range(hyper["l_max"] + 1)
            for p in (parities or ((-1) ** degree,))
        ]
    )
    hidden_equimd = hidden_irreps(hyper["num_features"], hyper["l_max"], hyper["parity"])
    space_n = space_e = _Space([(width, o3.Irrep("0e"), ("h", o3.Irrep("0e")))])
    for index, layer in enumerate(model.interactions):
        n = f"layer{index}_convnet.conv."
        e = f"interactions.{index}."
        last = index == len(model.interactions) - 1
        hidden = o3.Irreps(f"{features}x0e") if last else hidden_nequip
        irreps_n_in = o3.Irreps([(m, ir) for m, ir, _ in space_n.blocks])
        pre_n, out_n = _gate_space(irreps_n_in, irreps_sh, hidden)
        target_irs = {ir for _, ir, _ in pre_n.blocks}
        conv_n, keys_n = _conv_space(space_n, irreps_sh, target_irs)
        conv_e, keys_e = _conv_space(space_e, irreps_sh, target_irs)
        pre_e_irreps = o3.Irreps(layer.gate.irreps_in)
        # linear_1 (nequip) → linear_in (equimd): same space in, same space out
        lin_n = o3.Linear(irreps_n_in, irreps_n_in)
        dense = _dense_linear(
            lin_n, take(n + "linear_1.weight"), space_n.labels(irreps_n_in),
            space_n.labels(irreps_n_in)
        )
        irreps_e_in = layer.irreps_in
        target[e + "linear_in.weight"] = _fill_linear(
            layer.linear_in, dense, space_e.labels(irreps_e_in), space_e.labels(irreps_e_in)
        )
        # radial MLP
        mlp = [k for k in state if k.startswith(n + "edge_mlp.mlp.")]
        mlp.sort(key=lambda k: int(k.split(".")[-2]))
        radial = list(layer.radial_weights)
        if len(mlp) != len(radial):
            raise NequipImportError(f"radial MLP of layer {index} has {len(mlp)} layers")
        c = layer.radial_weights.activation_cst  # SiLU normalisation of the hidden layers
        for depth, key in enumerate(mlp):
            weight = take(key)
            h_in = weight.shape[0]
            gain = 1.0 if depth == 0 else math.sqrt(2.0)
            w = weight * (gain / math.sqrt(h_in)) * math.sqrt(h_in)
            w = w / basis_ratio if depth == 0 else w / c
            if depth == len(mlp) - 1:  # columns: nequip instruction order → equimd's
                columns, start = {}, 0
                for key_n in keys_n:
                    columns[key_n[:3]] = (start, key_n[3])
                    start += key_n[3]
                order = []
                for key_e in keys_e:
                    begin, mul = columns[key_e[:3]]
                    order += range(begin, begin + mul)
                w = w[:, order]
            target[f"{e}radial_weights.layer{depth}.weight"] = w
        # linear_2 (nequip: simplified conv output → pre-gate) → linear_out
        lin_n = o3.Linear(conv_n_irreps := o3.Irreps(
            [(m, ir) for m, ir, _ in conv_n.blocks]).simplify(), pre_irreps_n := o3.Irreps(
            [(m, ir) for m, ir, _ in pre_n.blocks]).simplify())
        dense = _dense_linear(
            lin_n, take(n + "linear_2.weight"), conv_n.labels(conv_n_irreps),
            pre_n.labels(pre_irreps_n)
        )
        # equimd's pre-gate space: its own gate order
        pre_e, out_e = _gate_space(
            o3.Irreps([(m, ir) for m, ir, _ in space_e.blocks]), irreps_sh,
            o3.Irreps(f"{features}x0e") if last else hidden_equimd
        )
        target[e + "linear_out.weight"] = _fill_linear(
            layer.linear_out, dense, conv_e.labels(layer.linear_out.irreps_in),
            pre_e.labels(pre_e_irreps)
        )
        if hyper["per_species_avg_num_neighbors"]:  # 1/√⟨n⟩ of each sender's type
            average = config["avg_num_neighbors"]
            target[e + "sender_normalization.scales"] = torch.tensor(
                [1.0 / math.sqrt(float(average[t])) for t in config["type_names"]],
                dtype=torch.float64,
            )
        if layer.self_connection is not None:
            sc_n = o3.FullyConnectedTensorProduct(
                irreps_n_in, o3.Irreps(f"{width}x0e"), pre_irreps_n, compile_left_right=False
            )
            weight, offset = take(n + "sc.weight"), 0
            labels_in, labels_out = space_n.labels(irreps_n_in), pre_n.labels(pre_irreps_n)
            dense = {}
            for ins in sc_n.instructions:
                mul1, mul2, mul_out = ins.path_shape
                block = weight[offset : offset + mul1 * mul2 * mul_out].reshape(mul1, mul2, mul_out)
                offset += mul1 * mul2 * mul_out
                per_type = torch.einsum("uvw,zv->uzw", block, embed) * ins.path_weight
                for u, a in enumerate(labels_in[ins.i_in1]):
                    for w_, b in enumerate(labels_out[ins.i_out]):
                        for z in range(n_types):
                            dense[(a, z, b)] = per_type[u, z, w_]
            sc_e = layer.self_connection
            labels_in, labels_out = space_e.labels(irreps_e_in), pre_e.labels(pre_e_irreps)
            out = torch.zeros(sc_e.weight_numel, dtype=torch.float64)
            offset = 0
            for ins in sc_e.instructions:
                mul1, mul2, mul_out = ins.path_shape
                block = out[offset : offset + mul1 * mul2 * mul_out].view(mul1, mul2, mul_out)
                offset += mul1 * mul2 * mul_out
                for u, a in enumerate(labels_in[ins.i_in1]):
                    for w_, b in enumerate(labels_out[ins.i_out]):
                        for z in range(mul2):
                            block[u, z, w_] = dense.get((a, z, b), 0.0) / ins.path_weight
            target[e + "self_connection.weight"] = out
        elif n + "sc.weight" in state:
            raise NequipImportError(f"layer {index} has a self-connection equimd did not build")
        space_n, space_e = out_n, out_e
    # readout on the last layer's scalars: one linear, or linear → SiLU → linear
    # (ScalarLinearLayer: x @ W·α, α = gain/√fan_in, gain √2 after a nonlinearity)
    readout = "per_atom_energy_readout.mlp_module.mlp."
    labels_in = space_e.labels(o3.Irreps(f"{features}x0e"))
    linears = [model.readout] if hyper["readout_hidden_features"] == 0 else [
        model.readout_hidden, model.readout
    ]
    for depth, module in enumerate(linears):
        weight = take(f"{readout}{2 * depth}.weight")  # [fan_in, fan_out]
        alpha = (1.0 if depth == 0 else math.sqrt(2.0)) / math.sqrt(weight.shape[0])
        labels_out = [[("E", depth, w) for w in range(weight.shape[1])]]
        dense = {
            (labels_in[0][u], labels_out[0][w]): weight[u, w] * alpha
            for u in range(weight.shape[0]) for w in range(weight.shape[1])
        }
        name = "readout" if module is model.readout else "readout_hidden"
        target[f"{name}.weight"] = _fill_linear(module, dense, labels_in, labels_out)
        labels_in = labels_out
    scales = take("per_type_energy_scale_shift.scales").reshape(-1)
    shifts = take("per_type_energy_scale_shift.shifts").reshape(-1)
    ones = torch.ones(n_types, dtype=torch.float64)
    target["species_energy_scale.scales"] = ones * scales if scales.numel() else ones
    target["scale_shift.e0"] = ones * shifts if shifts.numel() else ones * 0.0
    target["scale_shift.scale"] = torch.tensor(1.0, dtype=torch.float64)
    target["scale_shift.shift"] = torch.tensor(0.0, dtype=torch.float64)
    model.load_state_dict(target)
    left = sorted(
        k for k in state
        if k not in used and state[k].numel() and not k.endswith(("output_mask", "_rmax_recip"))
        and "._w3j_" not in k
    )
    if left:
        raise NequipImportError(f"nequip weights equimd has no place for: {left[:6]}")
    target_dtype = dtype or getattr(torch, str(config.get("model_dtype", "float64")))
    return model.to(target_dtype).eval()
