"""mace-torch's radial options on import: which equimd implements, which it refuses and why.

Implemented exactly (equimd.potentials.nn.mace_radial; the constants are copied from the file):
`radial_type` "bessel" / "gaussian" / "chebyshev", `distance_transform` None / "Agnesi" /
"Soft", `pair_repulsion` (ZBL); and the density-normalised interactions' `density_fn` weights.

`radial_type="chebyshev"`: the energies equal mace-torch's; the forces and stress do not.
mace-torch evaluates the basis with `torch.special.chebyshev_polynomial_t`, which has no
derivative with respect to the edge length, so mace's forces and stress leave out the radial
basis' gradient (they are not -dE/dr of its own energy). equimd's are -dE/dr (the importer
warns).
"""

from __future__ import annotations

from typing import Any

import torch

from equimd.potentials.nn.mace_radial import DISTANCE_TRANSFORMS, RADIAL_TYPES

CHEBYSHEV_WARNING = (
    "radial_type='chebyshev': equimd's energies equal mace-torch's, its forces and stress do "
    "not: mace-torch's torch.special.chebyshev_polynomial_t has no derivative with respect to "
    "the edge length, so mace's forces leave out the radial basis' gradient (they are not "
    "-dE/dr); equimd's are -dE/dr"
)
# buffers of the radial options, copied from the file (module path in equimd == in mace)
OPTION_BUFFERS = {
    # recomputed by equimd in float64; copied so a float32 model keeps its own rounding
    "radial_embedding.bessel_fn.prefactor": "radial_embedding.bessel_fn.prefactor",
    "radial_embedding.bessel_fn.gaussian_weights": "radial_embedding.bessel_fn.gaussian_weights",
    "radial_embedding.distance_transform.q": "radial_embedding.distance_transform.q",
    "radial_embedding.distance_transform.p": "radial_embedding.distance_transform.p",
    "radial_embedding.distance_transform.a": "radial_embedding.distance_transform.a",
    "radial_embedding.distance_transform.alpha": "radial_embedding.distance_transform.alpha",
    "radial_embedding.distance_transform.covalent_radii": (
        "radial_embedding.distance_transform.covalent_radii"
    ),
    "pair_repulsion_fn.c": "pair_repulsion.c",
    "pair_repulsion_fn.p": "pair_repulsion.p",
    "pair_repulsion_fn.covalent_radii": "pair_repulsion.covalent_radii",
    "pair_repulsion_fn.a_exp": "pair_repulsion.a_exp",
    "pair_repulsion_fn.a_prefactor": "pair_repulsion.a_prefactor",
}

OPTIONAL_BUFFERS = {"radial_embedding.bessel_fn.prefactor"}


def radial_options(hp: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """equimd `MACE` keyword arguments of mace's radial options; appends refusals to `problems`."""
    radial_type = hp.get("radial_type") or "bessel"
    if radial_type not in RADIAL_TYPES:
        problems.append(f"radial_type={radial_type!r} (supported: {list(RADIAL_TYPES)})")
    transform = hp.get("distance_transform")
    transform = None if transform in (None, "None", "") else transform
    if transform not in DISTANCE_TRANSFORMS:
        problems.append(
            f"distance_transform={transform!r} (supported: {list(DISTANCE_TRANSFORMS)})"
        )
    if radial_type == "chebyshev":
        import warnings

        warnings.warn(CHEBYSHEV_WARNING, stacklevel=3)
    return {
        "radial_type": radial_type,
        "distance_transform": transform,
        "pair_repulsion": bool(hp.get("pair_repulsion", False)),
    }


def copy_option_buffers(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> set[str]:
    """Copy the radial options' constants from mace's state dict; return the keys used.

    Every such buffer of the equimd model must be in the file (trainable transform or ZBL
    parameters are stored under the same names, as parameters)."""
    ours = dict(model.named_buffers())
    used = set()
    with torch.no_grad():
        for theirs, key in OPTION_BUFFERS.items():
            if key not in ours:
                continue
            if theirs not in state and theirs in OPTIONAL_BUFFERS:
                continue
            if theirs not in state:
                from equimd.potentials.models.mace_pickle import MaceImportError

                raise MaceImportError(f"the mace state dict has no entry {theirs!r}")
            source = state[theirs]
            if source.shape != ours[key].shape:
                from equimd.potentials.models.mace_pickle import MaceImportError

                raise MaceImportError(
                    f"{theirs}: {tuple(source.shape)} in the mace model, equimd expects "
                    f"{tuple(ours[key].shape)}"
                )
            ours[key].copy_(source)
            used.add(theirs)
        orders = "radial_embedding.bessel_fn.n"  # Chebyshev: the degrees 1..num_basis
        if orders in state and hasattr(model.radial_embedding.bessel_fn, "num_basis"):
            expected = torch.arange(1, model.radial_embedding.bessel_fn.num_basis + 1)
            if state[orders].reshape(-1).tolist() != expected.tolist():
                from equimd.potentials.models.mace_pickle import MaceImportError

                raise MaceImportError(
                    f"{orders} = {state[orders].tolist()}, expected the degrees 1..{len(expected)}"
                )
            used.add(orders)
        for i, interaction in enumerate(model.interactions):
            if interaction.density_fn is None:
                continue
            key = f"interactions.{i}.density_fn.layer0.weight"
            target = interaction.density_fn.layer0.weight
            if key not in state or state[key].shape != target.shape:
                from equimd.potentials.models.mace_pickle import MaceImportError

                raise MaceImportError(
                    f"{key}: missing or of another shape than {tuple(target.shape)}"
                )
            target.copy_(state[key])
            used.add(key)
    return used
