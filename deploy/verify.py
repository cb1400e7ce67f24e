"""Check a deployed model file against the eager model it came from.

    result = verify("model.pt", "best.ckpt", frames)   # frames: ase.Atoms or Configuration
    print(format_report(result))

The eager reference is `ForceField(model)` on the matscipy neighbor list (the training
path); the deployed model uses its in-graph cell list, so the neighbor list is checked too.
By default the reference runs in the deployed model's dtype (an export check); pass
``reference_dtype="float64"`` to measure the float32 error against float64 instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from equimd.deploy.load import DeployedModel, load
from equimd.potentials.models.base import Potential

# Relative deviation (max |Δ| / max |reference|) accepted by `verify` per dtype.
TOLERANCES = {"float64": 1e-10, "float32": 1e-5}


def sample_frames(species: Sequence[int], seed: int = 0) -> list[Any]:
    """Structures for a quick check when none are given (ase.Atoms, all of `species`):

    a triclinic periodic box, a non-periodic cluster, a slab (pbc = T, T, F) and a
    2-atom periodic cell smaller than a typical cutoff (many images).
    """
    from ase import Atoms

    rng = np.random.default_rng(seed)

    def jittered_grid(shape: tuple[int, int, int], spacing: float) -> np.ndarray:
        grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
        return grid.reshape(-1, 3) * spacing + rng.normal(0.0, 0.1, (int(np.prod(shape)), 3))

    def numbers(n: int) -> np.ndarray:
        return rng.choice(np.asarray(species), size=n)

    shear = np.array([[1.0, 0.0, 0.0], [0.25, 1.0, 0.0], [0.15, -0.2, 1.0]])
    box = Atoms(numbers(27), positions=jittered_grid((3, 3, 3), 2.3) @ shear,
                cell=3 * 2.3 * shear, pbc=True)
    cluster = Atoms(numbers(12), positions=jittered_grid((3, 2, 2), 1.6), pbc=False)
    slab = Atoms(numbers(18), positions=jittered_grid((3, 3, 2), 2.3),
                 cell=np.diag([6.9, 6.9, 15.0]), pbc=(True, True, False))
    small = Atoms(numbers(2), positions=[[0.0, 0.0, 0.0], [1.2, 1.1, 1.3]],
                  cell=[[2.5, 0.0, 0.0], [0.4, 2.4, 0.0], [0.3, 0.2, 2.6]], pbc=True)
    return [box, cluster, slab, small]


def verify(
    model_path: str | os.PathLike | DeployedModel,
    checkpoint_or_model: str | os.PathLike | Potential,
    frames: Sequence[Any] | None = None,
    *,
    reference_dtype: str | None = None,
    state_key: str = "state_dict",
) -> dict[str, Any]:
    """Evaluate the deployed and the eager model on `frames`; return the max deviations.

    frames: ase.Atoms or `Configuration`s (anything with positions, numbers, cell, pbc);
        None uses `sample_frames`. Stress is compared on frames with any periodic direction.
    Returns {"frames", "kind", "dtype", "reference_dtype", "energy_max_abs" (eV),
    "energy_per_atom_max_abs" (eV/atom), "forces_max_abs" (eV/Å), "stress_max_abs" (eV/Å³),
    "<quantity>_max_rel" (max |Δ| / max |reference|), "tolerance", "passed"}.
    """
    from equimd.deploy.export import DTYPES, resolve_model
    from equimd.deploy.rebuild import rebuild_model
    from equimd.potentials.data.configuration import Configuration
    from equimd.potentials.data.graph import configuration_to_graph
    from equimd.potentials.forcefield import ForceField

    deployed = model_path if isinstance(model_path, DeployedModel) else load(model_path)
    reference_name = reference_dtype or deployed.metadata["dtype"]
    dtype = DTYPES[reference_name]
    eager = ForceField(rebuild_model(resolve_model(checkpoint_or_model, state_key), dtype))
    if frames is None:
        frames = sample_frames(deployed.species)

    deviations: dict[str, list[float]] = {key: [] for key in ("energy", "energy_per_atom", "forces", "stress")}
    scales: dict[str, list[float]] = {key: [] for key in ("energy", "forces", "stress")}
    for index, frame in enumerate(frames):
        config = frame if isinstance(frame, Configuration) else Configuration.from_atoms(
            frame, source=f"frame {index}"
        )
        periodic = bool(np.any(config.pbc))
        graph = configuration_to_graph(config, deployed.r_max, dtype=dtype)
        reference = {
            key: value.detach()
            for key, value in eager(graph, compute_forces=True, compute_stress=periodic).items()
        }
        out = deployed(config.positions, config.numbers, config.cell, config.pbc,
                       compute_stress=periodic)
        out = {key: value.cpu() for key, value in out.items()}
        energy_delta = abs(float(out["energy"]) - float(reference["energy"][0]))
        deviations["energy"].append(energy_delta)
        deviations["energy_per_atom"].append(energy_delta / max(config.n_atoms, 1))
        scales["energy"].append(abs(float(reference["energy"][0])))
        forces = reference["forces"].double()
        deviations["forces"].append(float((out["forces"].double() - forces).abs().max()) if len(forces) else 0.0)
        scales["forces"].append(float(forces.abs().max()) if len(forces) else 0.0)
        if periodic:
            stress = reference["stress"][0].double()
            deviations["stress"].append(float((out["stress"].double() - stress).abs().max()))
            scales["stress"].append(float(stress.abs().max()))

    result: dict[str, Any] = {
        "frames": len(frames),
        "kind": deployed.kind,
        "dtype": deployed.metadata["dtype"],
        "reference_dtype": reference_name,
    }
    for key, values in deviations.items():
        result[f"{key}_max_abs"] = max(values, default=0.0)
    for key, values in scales.items():
        scale = max(values, default=0.0)
        result[f"{key}_max_rel"] = result[f"{key}_max_abs"] / scale if scale > 0 else 0.0
    result["tolerance"] = TOLERANCES[deployed.metadata["dtype"]] if reference_dtype is None else None
    result["passed"] = result["tolerance"] is None or all(
        result[f"{key}_max_rel"] <= result["tolerance"] for key in scales
    )
    return result


def format_report(result: dict[str, Any]) -> str:
    """A short table of the deviations for the terminal."""
    lines = [
        f"verify: {result['kind']} {result['dtype']} vs eager {result['reference_dtype']} "
        f"on {result['frames']} frames",
        f"  {'quantity':<8} {'max |Δ|':>10} {'unit':<6} {'max |Δ| / max |ref|':>20}",
    ]
    for key, unit in (("energy", "eV"), ("forces", "eV/Å"), ("stress", "eV/Å³")):
        lines.append(
            f"  {key:<8} {result[key + '_max_abs']:>10.3e} {unit:<6} "
            f"{result[key + '_max_rel']:>20.3e}"
        )
    if result["tolerance"] is not None:
        verdict = "PASSED" if result["passed"] else "FAILED"
        lines.append(f"  {verdict} (tolerance {result['tolerance']:.0e} relative)")
    return "\n".join(lines)
