"""`keep_freed_memory`: let glibc's malloc reuse freed large blocks instead of page-faulting
fresh ones, for every evaluation after the first.

An energy + forces evaluation allocates and frees large edge-sized temporaries ([E, ·] tensors:
radial weights, messages, their gradients; tens of MB each). glibc serves blocks above its
mmap threshold (adaptive, at most 32 MiB) with fresh `mmap`ed pages and unmaps them on free, and
it returns freed memory at the top of the heap to the system above its trim threshold, so the
next evaluation page-faults the same memory in again: on this project's 2-core VM about 2 µs a
page, ~19,000 faults (~10 % of the time) per MACE-small evaluation of the 192-atom water box
(docs/performance.md, "Memory allocation"). Setting both thresholds to 1 GiB with `mallopt`
makes freed blocks stay in the heap for reuse: ~500 faults per evaluation. Both are needed
(setting only the trim threshold also fixes the mmap threshold at its 128 KiB default: far more
faults). The price: the process keeps up to its peak memory instead of returning it between
evaluations.

Called once per process by equimd's entry points — the `equimd` command, `equimd.deploy.load`
(so the ASE calculator, OpenMM forces and `equimd md`) and the trainer. Opt out with the
environment variable ``EQUIMD_KEEP_FREED_MEMORY=0``. A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 1 << 30
ENVIRONMENT_VARIABLE = "EQUIMD_KEEP_FREED_MEMORY"

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds to 1 GiB (once per process); True if they are set
    (now or before), False where not glibc, where `mallopt` refused, or when opted out."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENVIRONMENT_VARIABLE, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # the mmap threshold first: setting the trim threshold alone would freeze it at 128 KiB
    _applied = bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, THRESHOLD_BYTES)
    )
    return _applied
