"""Forces and stress from the energy, by automatic differentiation — the one place it happens.

Given per-atom energies E_a(x, h) from a `Potential`:

    energy_b = Σ_{a ∈ b} E_a
    forces   = -∂E/∂x                                        [N, 3] eV/Å
    virial   = -∂E/∂ε  at ε = 0, with x → x (1 + ε), h → h (1 + ε)   [B, 3, 3] eV
    stress   = -virial / V = (1/V) ∂E/∂ε   (ASE sign: positive = tensile)   eV/Å³

The strain ε is symmetrised before use, so virial and stress are symmetric.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from equimd.potentials.data.graph import AtomicGraph
from equimd.potentials.nn.scatter import scatter_sum


class ForceField(nn.Module):
    """Wrap a `Potential`; `forward(graph, ...)` returns a dict of tensors:

    energy [B] eV, atomic_energies [N] eV, forces [N, 3] eV/Å (if compute_forces),
    virial [B, 3, 3] eV and stress [B, 3, 3] eV/Å³ (if compute_stress).
    `training=True` keeps the autograd graph so losses on forces/stress can be minimised.
    """

    def __init__(self, potential: nn.Module) -> None:
        super().__init__()
        self.potential = potential

    def forward(
        self,
        graph: AtomicGraph,
        compute_forces: bool = True,
        compute_stress: bool = False,
        training: bool = False,
    ) -> Dict[str, Tensor]:
        num_structures = graph.ptr.shape[0] - 1
        need_grad = compute_forces or compute_stress
        leaf_positions = graph.positions
        if need_grad:
            leaf_positions = graph.positions.detach().requires_grad_(True)
        positions = leaf_positions
        cell = graph.cell
        strain: Optional[Tensor] = None
        if compute_stress:
            strain = torch.zeros(
                (num_structures, 3, 3), dtype=positions.dtype, device=positions.device
            ).requires_grad_(True)
            symmetric = 0.5 * (strain + strain.transpose(1, 2))
            deformation = torch.eye(3, dtype=positions.dtype, device=positions.device) + symmetric
            positions = torch.bmm(positions.unsqueeze(1), deformation[graph.batch]).squeeze(1)
            cell = torch.bmm(cell, deformation)
        strained = AtomicGraph(
            positions=positions,
            numbers=graph.numbers,
            edge_index=graph.edge_index,
            edge_shift=graph.edge_shift,
            cell=cell,
            pbc=graph.pbc,
            batch=graph.batch,
            ptr=graph.ptr,
            energy=None,
            forces=None,
            stress=None,
        )
        atomic_energies = self.potential(strained)
        # scatter_add, not index_add: torch 2.9.1's AOTInductor cannot generate multi-threaded
        # CPU code for an index_add into the [1] energy of one structure (deploy/aoti.py)
        energy = scatter_sum(atomic_energies, graph.batch, num_structures, keep_source=False)
        results: Dict[str, Tensor] = {"energy": energy, "atomic_energies": atomic_energies}
        if not need_grad:
            return results

        inputs: List[Tensor] = [leaf_positions]
        if strain is not None:
            inputs.append(strain)
        grad_outputs: List[Optional[Tensor]] = [torch.ones_like(energy)]
        grads = torch.autograd.grad(
            [energy],
            inputs,
            grad_outputs=grad_outputs,
            create_graph=training,
            retain_graph=training,
            allow_unused=True,
        )
        if compute_forces:
            d_positions = grads[0]
            if d_positions is None:
                d_positions = torch.zeros_like(leaf_positions)
            results["forces"] = -d_positions
        if strain is not None:
            d_strain = grads[1]
            if d_strain is None:
                d_strain = torch.zeros_like(strain)
            volume = torch.linalg.det(graph.cell).abs()
            periodic = (volume > 0).view(-1, 1, 1)
            safe_volume = torch.where(volume > 0, volume, torch.ones_like(volume)).view(-1, 1, 1)
            results["virial"] = -d_strain
            results["stress"] = torch.where(
                periodic, d_strain / safe_volume, torch.zeros_like(d_strain)
            )
        return results
