"""`equimd deploy CHECKPOINT -o model.pt [--dtype] [--format] [--verify]`.

The `equimd` entry point (md_drivers/cli.py) adds the subcommand with
`add_deploy_arguments(subparser)` and calls `run_deploy(args)`.
"""

from __future__ import annotations

import argparse
import time


def add_deploy_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `deploy` arguments to `parser` (a subcommand parser)."""
    parser.add_argument("checkpoint", help="training checkpoint (.ckpt/.pt written by equimd)")
    parser.add_argument(
        "-o", "--output", required=True, help="model file to write (e.g. model.pt; .pt2 for aoti)"
    )
    parser.add_argument(
        "--dtype", choices=("float32", "float64"), default="float32",
        help="floating dtype of the deployed model (default: float32, for MD)",
    )
    parser.add_argument(
        "--format", choices=("torchscript", "aoti"), default="torchscript",
        help="torchscript (default; neighbor list in the graph, any device) or aoti "
        "(AOTInductor ahead-of-time compiled, one device; compiling takes minutes)",
    )
    parser.add_argument(
        "--device", default="cpu", help="device an aoti package is compiled for (default: cpu)"
    )
    parser.add_argument(
        "--weights", default="state_dict",
        help="which weights of the checkpoint to export (default: state_dict)",
    )
    parser.add_argument(
        "--tp-backend", default=None,
        help="convolution backend of the file (fused | e3nn | so2 | cueq | compiled; default: the "
        "model's, cueq and compiled exported as fused so the file runs anywhere; same weights "
        "and numbers). compiled: equimd's C++ kernel on CPU (`equimd kernels build`), fastest "
        "for MD; loading the file needs the kernel built on that host",
    )
    parser.add_argument(
        "--verify", action="store_true",
        help="after export, compare the file with the eager model on sample structures",
    )
    return parser


def run_deploy(args: argparse.Namespace) -> int:
    """Export (and optionally verify); print every file written. Returns the exit status."""
    from equimd.deploy.export import export_model
    from equimd.deploy.load import load

    start = time.perf_counter()
    path = export_model(
        args.checkpoint, args.output, dtype=args.dtype, format=args.format,
        device=args.device, state_key=args.weights, tp_backend=args.tp_backend, progress=print,
    )
    model = load(path, device=args.device if args.format == "aoti" else "cpu")
    print(f"  {model}")
    print(f"  exported in {time.perf_counter() - start:.1f} s")
    if not args.verify:
        return 0
    from equimd.deploy.verify import format_report, verify

    result = verify(model, args.checkpoint, state_key=args.weights)
    print(format_report(result))
    return 0 if result["passed"] else 1


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: `python -m equimd.deploy.cli CHECKPOINT -o model.pt`."""
    parser = add_deploy_arguments(
        argparse.ArgumentParser(prog="equimd deploy", description="Export a trained model.")
    )
    return run_deploy(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
