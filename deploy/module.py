"""The deployable wrapper: raw arrays in, energy/forces/stress out, neighbor list inside.

`DeployedPotential` is what `equimd deploy` scripts and saves (TorchScript format)::

    forward(positions [N, 3] Å, numbers [N] int64, cell [3, 3] Å, pbc [3] bool)
        -> {"energy": [] eV, "atomic_energies": [N] eV, "forces": [N, 3] eV/Å,
            "stress": [3, 3] eV/Å³ (ASE sign), "virial": [3, 3] eV}

    compute_local(positions [N, 3] Å, numbers [N] int64, nlocal: int, compute_virial: bool)
        -> {"energy": [] eV (local atoms only), "atomic_energies": [nlocal] eV,
            "forces": [N, 3] eV/Å (on every atom), "virial": [3, 3] eV}

`compute_local` serves domain-decomposed hosts (the LAMMPS pair style in lammps/): the first
`nlocal` atoms are the rank's own, the rest its ghost atoms, all as one non-periodic cluster;
the energy is that of the local atoms and the forces its gradient on local and ghost atoms.
The attribute `receptive_field` (Å, -1 if unknown) is the ghost cutoff such hosts need.

The neighbor list is the TorchScript cell list of `equimd.potentials.data.cell_list`, computed in
the model's dtype on the model's device. Forces, stress and virial come from
`equimd.potentials.forcefield.ForceField` (autograd), never from a second derivation here.

`single_structure_graph` and `single_structure_results` are shared with the AOTInductor export
(`equimd.deploy.aoti`), which traces the same computation from a precomputed neighbor list.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

from equimd.deploy.metadata import receptive_field as model_receptive_field
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
        receptive_field: float, Å: an atom's energy depends on the atoms within this distance
            only (layers × r_max, `equimd.deploy.metadata.receptive_field`); -1.0 if unknown.
    """

    def __init__(self, forcefield: ForceField, r_max: float, species: list[int]) -> None:
        super().__init__()
        self.forcefield = forcefield
        self.r_max = float(r_max)
        self.compute_stress = True
        self.receptive_field = potential_receptive_field(forcefield.potential)
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


    @torch.jit.export
    def compute_local(
        self, positions: Tensor, numbers: Tensor, nlocal: int, compute_virial: bool
    ) -> Dict[str, Tensor]:
        """Energy of the first `nlocal` atoms of a non-periodic cluster and its gradient.

        positions [N, 3] Å: the `nlocal` local atoms, then ghost atoms (images included, as
        separate atoms); numbers [N]. Returns energy [] eV = Σ_{a < nlocal} E_a,
        atomic_energies [nlocal] eV, forces [N, 3] eV/Å = -∂energy/∂x for every atom, and
        virial [3, 3] eV = -∂energy/∂ε (symmetric strain ε applied to all positions; zeros if
        not `compute_virial`). Summed over the ranks of a domain decomposition whose ghost
        atoms reach `receptive_field` (plus the neighbor skin), these are the energy, forces
        (after ghost forces are sent to their owners) and virial of the periodic system.

        The autograd mirrors `ForceField.forward` (which differentiates the energy of every
        atom) for the energy of a subset of atoms.
        """
        dtype = self.reference.dtype
        device = self.reference.device
        positions = positions.to(device=device, dtype=dtype)
        numbers = numbers.to(device=device, dtype=torch.long)
        cell = torch.zeros((3, 3), dtype=dtype, device=device)
        pbc = torch.zeros((3,), dtype=torch.bool, device=device)
        check_finite_inputs(positions, cell)
        if nlocal < 0 or nlocal > positions.shape[0]:
            raise RuntimeError(
                "equimd model: compute_local needs 0 <= nlocal <= number of atoms, got nlocal "
                + str(nlocal) + " for " + str(positions.shape[0]) + " atoms"
            )
        edge_index, shifts = neighbor_list_torch(positions, cell, pbc, self.r_max)
        leaf = positions.detach().requires_grad_(True)
        strained = leaf
        strain = torch.zeros((3, 3), dtype=dtype, device=device)
        if compute_virial:
            strain = strain.requires_grad_(True)
            deformation = torch.eye(3, dtype=dtype, device=device) + 0.5 * (strain + strain.t())
            strained = leaf @ deformation
        graph = single_structure_graph(
            strained, numbers, edge_index, shifts.to(dtype), cell, pbc
        )
        atomic_energies = self.forcefield.potential(graph)  # [N] eV
        local_energies = atomic_energies[:nlocal]
        energy = local_energies.sum()
        inputs: List[Tensor] = [leaf]
        if compute_virial:
            inputs.append(strain)
        grad_outputs: List[Optional[Tensor]] = [torch.ones_like(energy)]
        grads = torch.autograd.grad([energy], inputs, grad_outputs=grad_outputs, allow_unused=True)
        d_positions = grads[0]
        if d_positions is None:
            d_positions = torch.zeros_like(leaf)
        virial = torch.zeros((3, 3), dtype=dtype, device=device)
        if compute_virial:
            d_strain = grads[1]
            if d_strain is not None:
                virial = -d_strain
        return {
            "energy": energy.detach(),
            "atomic_energies": local_energies.detach(),
            "forces": -d_positions.detach(),
            "virial": virial.detach(),
        }


def potential_receptive_field(potential: Any) -> float:
    """`equimd.deploy.metadata.receptive_field` of a `Potential` (Å), -1.0 if unknown."""
    model_type = getattr(potential, "model_type", None)
    hyperparameters = getattr(potential, "hyperparameters", None)
    if not isinstance(model_type, str) or not callable(hyperparameters):
        return -1.0
    value = model_receptive_field(model_type, dict(hyperparameters()))
    return -1.0 if value is None else float(value)


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
