"""`equimd.allocator.keep_freed_memory`: large freed blocks are reused instead of page-faulted
in again (glibc), the opt-out variable works, and the entry points apply it."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)

# a 64 MiB block allocated, touched and freed: minor page faults per round, after 10 rounds of
# warm-up (glibc's heap reaches its steady layout within a few rounds)
ROUNDS = textwrap.dedent(
    """
    import json, resource, sys, torch
    from equimd.allocator import keep_freed_memory
    applied = keep_freed_memory() if sys.argv[1] == "apply" else None
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.empty(16 << 20).fill_(1.0)
    before = faults()
    for _ in range(10):
        torch.empty(16 << 20).fill_(1.0)  # 64 MiB of float32
    print(json.dumps({"applied": applied, "faults_per_round": (faults() - before) / 10}))
    """
)


def run(mode: str, **env: str) -> dict:
    import os

    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True,
                         check=True, env={**os.environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_large_blocks_are_reused_not_faulted_in_again():
    default = run("default")
    kept = run("apply")
    assert kept["applied"] is True
    assert default["faults_per_round"] > 10_000  # 64 MiB of fresh 4 KiB pages each round
    assert kept["faults_per_round"] < default["faults_per_round"] / 20


def test_the_environment_variable_opts_out():
    assert run("apply", EQUIMD_KEEP_FREED_MEMORY="0")["applied"] is False


def test_loading_a_deployed_model_and_training_apply_it():
    """deploy.load, the trainer and the command line call it (so ASE, OpenMM and `equimd md`,
    which load through deploy.load, get it)."""
    import inspect

    from equimd.cli import main
    from equimd.deploy import load
    from equimd.potentials.train.trainer import train

    for entry in (load, train, main):
        assert "keep_freed_memory()" in inspect.getsource(entry), entry.__qualname__
