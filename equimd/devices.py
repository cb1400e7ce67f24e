"""`check_device`: a torch device name checked against this machine, shared by every command
(`evaluate --device`, `training.device`, the deployed-model loader, MD engines).

Imports torch only when called, so importing this module stays dependency-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from equimd.errors import DeviceError

if TYPE_CHECKING:
    import torch


def check_device(device: str | torch.device, option: str = "") -> torch.device:
    """`device` as a `torch.device` if this machine has it, else raise `DeviceError` (its
    message starts with `option`, e.g. "--device" or "training.device", when given)."""
    try:
        return _check_device(device)
    except DeviceError as error:
        if not option:
            raise
        raise DeviceError(f"{option}: {error}") from error.__cause__


def _check_device(device: str | torch.device) -> torch.device:
    import torch

    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as error:
        raise DeviceError(
            f"device {device!r} is not a device name torch knows ({_first_line(error)}); "
            "use 'cpu', 'cuda' or 'cuda:N'"
        ) from error
    if resolved.type == "cpu":
        return resolved
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {str(resolved)!r} was requested but CUDA is not available on this "
                f"machine (torch {torch.__version__}, torch.cuda.is_available() is False); "
                "use device='cpu'"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and not 0 <= resolved.index < count:
            raise DeviceError(
                f"device {str(resolved)!r} was requested but this machine has {count} CUDA "
                f"device(s) (cuda:0 to cuda:{count - 1})"
            )
        return resolved
    try:
        torch.empty(0, device=resolved)
    except Exception as error:  # backend not built in or no such device
        raise DeviceError(
            f"device {str(resolved)!r} is not available on this machine ({_first_line(error)})"
        ) from error
    return resolved


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
