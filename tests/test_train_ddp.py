"""Data-parallel training (torchrun + DDP, gloo on CPU): two ranks train the weights one
process trains on the same global batches, and a run whose rank was killed resumes."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from equimd.potentials.models.serialization import read_checkpoint
from equimd.potentials.train.batching import collate_labelled, labelled_graph
from equimd.potentials.train.config import config_from_dict
from equimd.potentials.train.distributed import Ranks
from equimd.potentials.train.loss import LabelCounts, LossWeights, weighted_loss
from equimd.potentials.train.trainer import train

REPO = Path(__file__).resolve().parents[1]

MODELS = {
    "nequip": {
        "model_type": "nequip",
        "num_features": 4,
        "l_max": 1,
        "num_layers": 2,
        "r_max": 3.5,
        "radial_mlp_hidden": [16],
        "num_bessel": 4,
    },
    "mace": {
        "model_type": "mace",
        "max_ell": 1,
        "hidden_irreps": "4x0e+4x1o",
        "correlation": 2,
        "num_interactions": 2,
        "MLP_irreps": "4x0e",
        "radial_MLP": [8],
        "r_max": 3.5,
    },
}


def raw_config(data: Path, run_dir: Path, model: str = "nequip", **training) -> dict:
    """9 training and 3 validation frames; batch_size 4 makes global batches of 4, 4 and 1
    structures, so with 2 ranks the last one leaves rank 1 without a structure. Adam is
    nearly blind to the scale of the gradient; the weight decay makes the weights depend on
    it (a gradient off by a factor 2 moves them by ~1e-8 in 2 epochs, far above round-off)."""
    return {
        "data": {"train": str(data), "valid_fraction": 0.25},
        "model": dict(MODELS[model]),
        "training": {
            "epochs": 2,
            "batch_size": 4,
            "valid_batch_size": 1,
            "lr": 0.03,
            "device": "cpu",
            "seed": 1,
            "dtype": "float64",
            "stress_weight": 10.0,
            "weight_decay": 0.01,
            **training,
        },
        "output": {"run_dir": str(run_dir)},
    }


@pytest.fixture(scope="module")
def copper(tmp_path_factory) -> Path:
    from tests.test_train import write_emt_copper

    return write_emt_copper(tmp_path_factory.mktemp("data") / "cu_emt.xyz")


@contextlib.contextmanager
def one_thread():
    """The ranks run with OMP_NUM_THREADS=1; the in-process reference uses the same."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def write_yaml(raw: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def start_ranks(config: Path, nproc: int = 2, resume: bool = False) -> subprocess.Popen:
    """`equimd train CONFIG --nproc N` in a subprocess (the launcher, torchrun, the ranks)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [
        sys.executable,
        "-m",
        "equimd.cli",
        "train",
        str(config),
        "--nproc",
        str(nproc),
        "--no-progress",
    ] + (["--resume"] if resume else [])
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def run_ranks(config: Path, resume: bool = False, timeout: float = 600) -> str:
    process = start_ranks(config, resume=resume)
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def assert_close_weights(left: Path, right: Path, tolerance: float = 1e-11) -> None:
    a, b = read_checkpoint(left)["raw_state_dict"], read_checkpoint(right)["raw_state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], rtol=tolerance, atol=tolerance, msg=key)
        else:
            assert torch.equal(a[key], b[key]), key


def assert_same_metrics(left: Path, right: Path) -> None:
    """metrics.csv rows written once per epoch (by rank 0 only), equal to round-off."""
    first, second = rows(left), rows(right)
    assert [r["epoch"] for r in first] == [r["epoch"] for r in second]
    for a, b in zip(first, second, strict=True):
        for key in a:
            if key.startswith(("train_", "valid_")) and a[key] not in ("", "nan"):
                assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-9, abs=1e-12), key


def test_shard_losses_sum_to_the_global_batch_loss(copper):
    """The identity the data-parallel gradient rests on: with the global label counts as
    denominators, the losses of the ranks' shards sum to the loss of the global batch, also
    when frames lack labels and a shard is empty of some label."""
    from equimd.potentials.data.io import read_configurations

    frames = read_configurations(copper, index=":5")
    frames[1].stress, frames[3].forces, frames[4].energy = None, None, None
    items = [labelled_graph(frame, 3.5, torch.float64) for frame in frames]
    generator = torch.Generator().manual_seed(0)

    def predictions(batch):
        graph = batch.graph
        noise = lambda t: t + torch.randn(t.shape, generator=generator, dtype=t.dtype)  # noqa: E731
        return {
            "energy": noise(graph.energy),
            "forces": noise(graph.forces),
            "stress": noise(graph.stress),
        }

    whole = collate_labelled(items)
    predicted = predictions(whole)
    weights = LossWeights(energy=1.0, forces=10.0, stress=3.0)
    counts = LabelCounts.of(items)
    assert (counts.energy, counts.forces, counts.stress) == (4, 32, 4)
    for world_size in (2, 3):
        total = torch.zeros((), dtype=torch.float64)
        for rank in range(world_size):
            shard = Ranks(rank, world_size).shard(list(range(len(items))))
            atoms = torch.cat(
                [torch.arange(whole.graph.ptr[i], whole.graph.ptr[i + 1]) for i in shard]
            )
            part = {
                "energy": predicted["energy"][shard],
                "forces": predicted["forces"][atoms],
                "stress": predicted["stress"][shard],
            }
            total = total + weighted_loss(
                part, collate_labelled([items[i] for i in shard]), weights, counts
            )
        torch.testing.assert_close(
            total, weighted_loss(predicted, whole, weights), rtol=1e-14, atol=0
        )


def test_one_process_ranks_are_no_ops():
    ranks = Ranks()
    assert not ranks.distributed and ranks.is_main
    assert ranks.shard([5, 6, 7]) == [5, 6, 7]
    assert ranks.sum([1, 2.5]) == [1.0, 2.5]
    assert ranks.broadcast({"a": 1}) == {"a": 1}
    module = torch.nn.Linear(2, 2)
    assert ranks.wrap(module) is module
    assert Ranks(1, 3).shard(list(range(8))) == [1, 4, 7]


def _two_ranks_match_one_process(copper: Path, tmp_path: Path, model: str) -> None:
    ranks_config = write_yaml(
        raw_config(copper, tmp_path / "ranks", model), tmp_path / "ranks.yaml"
    )
    output = run_ranks(ranks_config)
    assert "2 processes (DDP)" in output
    assert output.count("training completed after 2 epochs") == 1  # rank 0 reports
    with one_thread():
        single = train(
            config_from_dict(raw_config(copper, tmp_path / "single", model)), progress=False
        )
    assert_close_weights(single.last_checkpoint, tmp_path / "ranks" / "last.pt")
    assert_close_weights(single.best_checkpoint, tmp_path / "ranks" / "best.pt")
    assert_same_metrics(single.metrics_csv, tmp_path / "ranks" / "metrics.csv")
    losses = [float(r["train_loss"]) for r in rows(single.metrics_csv)]
    assert losses[-1] < losses[0]  # it trained: the weights compared are not the initial ones


def test_two_ranks_train_the_weights_of_one_process_nequip(copper, tmp_path):
    _two_ranks_match_one_process(copper, tmp_path, "nequip")


@pytest.mark.slow
def test_two_ranks_train_the_weights_of_one_process_mace(copper, tmp_path):
    _two_ranks_match_one_process(copper, tmp_path, "mace")


def _descendants(pid: int) -> list[int]:
    """Process ids below `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The process of `rank` (RANK in its environment, set by torchrun) under the launcher."""
    for pid in _descendants(launcher.pid):
        with contextlib.suppress(OSError):
            if f"RANK={rank}".encode() in (Path("/proc") / str(pid) / "environ").read_bytes().split(
                b"\0"
            ):
                return pid
    raise AssertionError(f"no process of rank {rank} under the launcher")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_sigkill_of_one_rank_stops_the_launcher_and_resume_matches(copper, tmp_path):
    raw = raw_config(copper, tmp_path / "run", epochs=1000)
    config = write_yaml(raw, tmp_path / "run.yaml")
    launcher = start_ranks(config)
    deadline = time.monotonic() + 300
    while not (
        (tmp_path / "run" / "metrics.csv").exists()
        and len(rows(tmp_path / "run" / "metrics.csv")) >= 2
    ):
        assert launcher.poll() is None, launcher.communicate()[0]
        assert time.monotonic() < deadline, "the ranks did not finish 2 epochs in time"
        time.sleep(0.1)
    os.kill(_rank_pid(launcher, 1), signal.SIGKILL)
    output, _ = launcher.communicate(timeout=120)  # the other rank is stopped, the launcher exits
    assert launcher.returncode != 0, output

    epoch = read_checkpoint(tmp_path / "run" / "last.pt")["progress"]["epoch"]
    assert epoch >= 2
    raw["training"]["epochs"] = epoch + 1
    run_ranks(write_yaml(raw, config), resume=True)
    assert [int(r["epoch"]) for r in rows(tmp_path / "run" / "metrics.csv")] == list(
        range(1, epoch + 2)
    )
    with one_thread():
        single = train(
            config_from_dict(raw_config(copper, tmp_path / "single", epochs=epoch + 1)),
            progress=False,
        )
    assert_close_weights(single.last_checkpoint, tmp_path / "run" / "last.pt", tolerance=1e-10)


@pytest.mark.slow
def test_an_error_of_rank_0_before_training_stops_every_rank(copper, tmp_path):
    """A run directory that already holds a run: rank 0's error reaches the other rank (which
    would otherwise wait for rank 0 forever), the launcher exits non-zero and says so."""
    raw = raw_config(copper, tmp_path / "run", epochs=1)
    config = write_yaml(raw, tmp_path / "run.yaml")
    run_ranks(config)
    process = start_ranks(config)
    output, _ = process.communicate(timeout=300)
    assert process.returncode != 0
    assert output.count("already holds a run") >= 2, output  # raised on both ranks
    assert "the 2 training processes stopped" in output
