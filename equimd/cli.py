"""The `equimd` command: a thin dispatcher; each subcommand's logic lives in its own module.

    equimd train CONFIG.yaml [--resume]
    equimd evaluate CHECKPOINT DATA [-o DIR] [--energy-key ...]
    equimd data convert IN.xyz OUT.h5 [--energy-key ...]
    equimd deploy CHECKPOINT -o model.pt [--dtype float32|float64] [--format torchscript|aoti] [--verify]
    equimd md STRUCTURE --model model.pt [--engine openmm|ase] ...
    equimd import mace MODEL.pt -o checkpoint.pt
    equimd info MODEL_OR_CHECKPOINT
    equimd demo [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


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
    result = train(config, resume=args.resume, progress=not args.no_progress)
    print(result)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from equimd.potentials.train.evaluate import evaluate

    evaluate(
        args.checkpoint,
        args.data,
        keys=_keys_from_args(args),
        output_dir=args.output,
        batch_size=args.batch_size,
        device=args.device,
        index=args.index,
    )
    return 0


def _cmd_data_convert(args: argparse.Namespace) -> int:
    from equimd.potentials.data.io import convert

    count = convert(args.input, args.output, _keys_from_args(args))
    print(f"wrote {count} frames to {args.output}")
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from equimd.deploy.cli import run_deploy

    return run_deploy(args)


def _cmd_md(args: argparse.Namespace) -> int:
    from equimd.md_drivers.run import run_md

    return run_md(args)


def _cmd_import_mace(args: argparse.Namespace) -> int:
    from equimd.potentials.models.mace_import import import_mace_file

    path = import_mace_file(
        args.model, args.output, head=args.head, architecture=args.architecture
    )
    print(f"wrote equimd checkpoint {path}; export it with: equimd deploy {path} -o model.pt")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from equimd.info import describe

    print(describe(args.path))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from equimd.demo import run_demo

    return run_demo(args.out, minutes=args.minutes, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="equimd",
        description="E(3)-equivariant interatomic potentials: train, evaluate, deploy, run MD.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a potential from a YAML config")
    train.add_argument("config", help="YAML config (see examples/train_nequip.yaml)")
    train.add_argument("--resume", action="store_true", help="continue from <run dir>/last.pt")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=_cmd_train)

    evaluate = commands.add_parser("evaluate", help="error metrics of a checkpoint on a dataset")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("data", help="extxyz, equimd HDF5 or rMD17 npz")
    evaluate.add_argument("-o", "--output", default=None, help="output dir (default: next to the checkpoint)")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    evaluate.add_argument("--index", default=":", help='frames, ASE style (":", ":100", "::5")')
    _add_key_arguments(evaluate)
    evaluate.set_defaults(handler=_cmd_evaluate)

    data = commands.add_parser("data", help="dataset tools")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    convert = data_commands.add_parser("convert", help="convert extxyz/npz/HDF5 to equimd HDF5")
    convert.add_argument("input")
    convert.add_argument("output")
    _add_key_arguments(convert)
    convert.set_defaults(handler=_cmd_data_convert)

    deploy = commands.add_parser("deploy", help="export a checkpoint to one model file")
    try:
        from equimd.deploy.cli import add_deploy_arguments
    except ImportError:  # pragma: no cover - broken installation
        add_deploy_arguments = None
    if add_deploy_arguments is not None:
        add_deploy_arguments(deploy)
    deploy.set_defaults(handler=_cmd_deploy)

    md = commands.add_parser("md", help="run molecular dynamics with a deployed model")
    try:
        from equimd.md_drivers.settings import add_md_arguments
    except ImportError:  # pragma: no cover - broken installation
        add_md_arguments = None
    if add_md_arguments is not None:
        add_md_arguments(md)
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

    info = commands.add_parser("info", help="describe a checkpoint or deployed model file")
    info.add_argument("path")
    info.set_defaults(handler=_cmd_info)

    demo = commands.add_parser(
        "demo", help="end-to-end demo on an EMT Cu dataset made here (train, deploy, MD)"
    )
    demo.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    demo.add_argument("--minutes", type=float, default=4.0, help="training budget (default 4)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        # our own errors name the file/frame/atom at fault: show them without a traceback
        if _is_equimd_error(error):
            print(f"equimd: error: {error}", file=sys.stderr)
            return 2
        raise


def _is_equimd_error(error: BaseException) -> bool:
    from equimd.errors import EquimdError

    return isinstance(error, (EquimdError, FileNotFoundError))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
