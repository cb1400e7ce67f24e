"""The deployable wrapper: raw arrays in, energy/forces/stress out, neighbor list inside.

`DeployedPotential` is what `equimd deploy` scripts and saves (TorchScript format)::

    forward(positions [N, 3] Å, numbers [N] int64, cell [3, 3] Å, pbc [3] bool)
        -> {"energy": [] eV, "atomic_energies": [N] eV, "forces": [N, 3] eV/Å,
            "stress": [3, 3] eV/Å³ (ASE sign), "virial": [3, 3] eV}

The neighbor list is the TorchScript cell list of `equimd.potentials.data.cell_list`, computed in
the model's dtype on the model's device. Forces, stress and virial come from
`equimd.potentials.forcefield.ForceField` (autograd), never from a second derivation here.

`single_structure_graph` and `single_structure_results` are shared with the AOTInductor export
(`equimd.deploy.aoti`), which traces the same computation from a precomputed neighbor list.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from equimd.potentials.data.cell_list import neighbor_list_torch
from equimd.potentials.data.graph import AtomicGraph
from equimd.potentials.forcefield import ForceField


def single_structure_graph(
    positions: Tensor, numbers: Tensor, edge_index: Tensor, shifts: Tensor, cell: Tensor, pbc: Tensor
) -> AtomicGraph:
    """An `AtomicGraph` of one structure (batch of size 1) from its arrays.

    positions [N, 3] Å, numbers [N], edge_index [2, E], shifts [E, 3] (integer lattice
    shifts in the float dtype), cell [3, 3] Å, pbc [3].
    """
    n_atoms = positions.shape[0]
    batch = torch.zeros_like(numbers)
    ptr = torch.zeros(2, dtype=torch.long, device=positions.device)
    ptr[1] = n_atoms
    return AtomicGraph(
        positions=positions,
        numbers=numbers,
        edge_index=edge_index,
        edge_shift=shifts,
        cell=cell.unsqueeze(0),
        pbc=pbc.unsqueeze(0),
        batch=batch,
        ptr=ptr,
        energy=None,
        forces=None,
        stress=None,
    )


def single_structure_results(
    results: dict[str, Tensor], compute_forces: bool, compute_stress: bool
) -> dict[str, Tensor]:
    """Drop the batch dimension (and the autograd graph) of `ForceField` results for one
    structure.

    Returns energy [] eV, atomic_energies [N] eV, and if requested forces [N, 3] eV/Å,
    stress [3, 3] eV/Å³ and virial [3, 3] eV.
    """
    out: dict[str, Tensor] = {
        "energy": results["energy"][0].detach(),
        "atomic_energies": results["atomic_energies"].detach(),
    }
    if compute_forces:
        out["forces"] = results["forces"].detach()
    if compute_stress:
        out["stress"] = results["stress"][0].detach()
        out["virial"] = results["virial"][0].detach()
    return out


def check_finite_inputs(positions: Tensor, cell: Tensor) -> None:
    """Raise (inside the exported graph too, e.g. under OpenMM's TorchForce) when a position or
    the cell is NaN or infinite, naming the first such atom: a blown-up simulation must stop
    with that message, not with NaN forces or an error from deep inside the neighbor list."""
    finite = torch.isfinite(positions).all(dim=1)
    if not bool(finite.all()):
        atom = int(torch.nonzero(~finite)[0, 0])
        raise RuntimeError(
            "equimd model: the position of atom " + str(atom) + " is not finite (NaN or "
            "infinity); the simulation has probably become unstable (time step, starting "
            "structure, or a configuration far outside the training data)"
        )
    if not bool(torch.isfinite(cell).all()):
        raise RuntimeError("equimd model: the cell (box vectors) is not finite (NaN or infinity)")


class DeployedPotential(nn.Module):
    """A `ForceField` plus the in-graph neighbor list; TorchScript-able.

    Attributes (settable on the scripted module):
        compute_stress: bool, default True. `forward` computes stress and virial when this is
            True and at least one direction is periodic; set False to skip the strain
            derivative (e.g. molecules in MD, where stress is never read).
        r_max: float, cutoff radius in Å.
    """

    def __init__(self, forcefield: ForceField, r_max: float, species: list[int]) -> None:
        super().__init__()
        self.forcefield = forcefield
        self.r_max = float(r_max)
        self.compute_stress = True
        self.register_buffer("species", torch.tensor([int(z) for z in species], dtype=torch.long))
        dtype = torch.float64
        for tensor in forcefield.state_dict().values():
            if tensor.is_floating_point():
                dtype = tensor.dtype
                break
        # A zero-dimensional buffer whose dtype (and device) is the model's: inputs are cast
        # to it, so callers may pass float64 positions to a float32 model.
        self.register_buffer("reference", torch.zeros((), dtype=dtype))

    def forward(self, positions: Tensor, numbers: Tensor, cell: Tensor, pbc: Tensor) -> dict[str, Tensor]:
        """positions [N, 3] Å, numbers [N] int64, cell [3, 3] Å, pbc [3] bool → results.

        Stress/virial are included when `self.compute_stress` and any(pbc).
        """
        stress = self.compute_stress and bool(pbc.any())
        return self.compute(positions, numbers, cell, pbc, True, stress)

    @torch.jit.export
    def compute(
        self,
        positions: Tensor,
        numbers: Tensor,
        cell: Tensor,
        pbc: Tensor,
        compute_forces: bool,
        compute_stress: bool,
    ) -> dict[str, Tensor]:
        """As `forward`, with explicit choices of what to differentiate."""
        dtype = self.reference.dtype
        device = self.reference.device
        positions = positions.to(device=device, dtype=dtype)
        cell = cell.to(device=device, dtype=dtype).reshape(3, 3)
        numbers = numbers.to(device=device, dtype=torch.long)
        pbc = pbc.to(device=device, dtype=torch.bool).reshape(3)
        check_finite_inputs(positions, cell)
        edge_index, shifts = neighbor_list_torch(positions, cell, pbc, self.r_max)
        graph = single_structure_graph(
            positions, numbers, edge_index, shifts.to(dtype), cell, pbc
        )
        results = self.forcefield(
            graph, compute_forces=compute_forces, compute_stress=compute_stress
        )
        return single_structure_results(results, compute_forces, compute_stress)


class NeighborList(nn.Module):
    """The in-graph cell list as a standalone module (shipped inside AOTInductor packages).

    forward(positions [N, 3] Å, cell [3, 3] Å, pbc [3] bool) → (edge_index [2, E] int64
    (sender, receiver), shifts [E, 3] integer lattice shifts in the positions' dtype).
    """

    def __init__(self, r_max: float) -> None:
        super().__init__()
        self.r_max = float(r_max)

    def forward(self, positions: Tensor, cell: Tensor, pbc: Tensor) -> tuple[Tensor, Tensor]:
        edge_index, shifts = neighbor_list_torch(positions, cell, pbc, self.r_max)
        return edge_index, shifts.to(positions.dtype)
