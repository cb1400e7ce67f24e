"""benchmarks/run_all.py's summary, the text `make bench` writes into the README: ratios from
the reports' timings against issue 20's bars, the tensor-product core's share of the matmul, each
report's date and commit, and the README block it replaces (no benchmark is run here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import run_all  # noqa: E402


def _timing(implementation: str, seconds: float, **extra) -> dict:
    return {"implementation": implementation, "median_s": seconds, "peak_rss_mb": 1024.0,
            "load_during": 0.01, "repeats": 20, **extra}  # fmt: skip


@pytest.fixture
def reports(tmp_path, monkeypatch) -> Path:
    core = {"backend": "fused", "irreps_in": "128x0e+128x1o", "forward_s": 0.05, "gflops": 30.0,
            "matmul_gflops": 150.0, "fraction_of_matmul": 0.2, "load_during": 0.0}  # fmt: skip
    mace = {"date": "2026-12-06 07:00 UTC", "commit": "abc1234", "settings": {"threads": 2},
            "results": [
                {**_timing("equimd", 0.40, tp_core=core), "config": "medium", "system": "water",
                 "dtype": "float32"},
                {**_timing("mace", 2.20), "config": "medium", "system": "water", "dtype": "float32"},
                {**_timing("equimd", 0.20), "config": "small", "system": "water", "dtype": "float32"},
                {**_timing("mace", 0.90), "config": "small", "system": "water", "dtype": "float32"},
            ]}  # fmt: skip
    models = {"date": "2026-12-06 06:00 UTC", "commit": "def5678", "settings": {"threads": 2},
              "results": [
                  {**_timing("equimd", 0.50), "row": "nequip", "system": "water", "dtype": "float32"},
                  {**_timing("nequip", 4.10), "row": "nequip", "system": "water", "dtype": "float32"},
              ]}  # fmt: skip
    neighbors = {"date": "2026-12-06 07:01 UTC", "commit": "abc1234", "cpu": "Test CPU (2 logical CPUs)",
                 "settings": {"threads": 2}, "systems": [
                     {"system": "fcc Cu 2048", "r_max": 6.0, "edges": 159748, "ours_ms": 30.0,
                      "matscipy_over_ours": 1.4}]}  # fmt: skip
    (tmp_path / "neighbors.json").write_text(json.dumps(neighbors))
    (tmp_path / "mace_speed.json").write_text(json.dumps(mace))
    (tmp_path / "models.json").write_text(json.dumps(models))
    monkeypatch.setattr(run_all, "OUT", tmp_path)
    return tmp_path


def test_the_summary_states_ratios_against_issue_20s_bars_with_dates_and_commits(reports):
    text = run_all.summary()
    assert "2026-12-06 07:00 UTC, commit abc1234" in text and "commit def5678" in text
    assert "Test CPU (2 logical CPUs)" in text  # the CPU the figures were measured on
    assert "- fcc Cu 2048, r_max 6.0: 159748 edges, ours 30.0 ms; matscipy/ours 1.40" in text
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if " | " in line}
    assert "**5.50×** ≥ 5× PASS" in rows["MACE medium"]  # 2.20 / 0.40
    assert "**4.50×** below 5×" in rows["MACE small"]  # 0.90 / 0.20
    assert "**8.20×** ≥ 8× PASS" in rows["nequip"]  # 4.10 / 0.50
    core = next(line for line in text.splitlines() if "TP core" in line)
    assert core.startswith("- MACE medium water float32") and "20.0 % of matmul" in core
    assert "PASS" in core


def test_a_tp_core_below_15_percent_of_the_matmul_is_said_so(reports):
    """The verdict is the products' figure of `aggregate`; the model's own call, also with the
    fused radial layer's matmul counted, is printed beside it and does not change it."""
    report = json.loads((reports / "mace_speed.json").read_text())
    path = {"forward_s": 0.08, "gflops": 6.0, "gflops_with_radial": 24.0, "rows": 8478,
            "edges": 16956, "paired": True, "fraction_of_matmul": 0.04,
            "fraction_with_radial": 0.16}  # fmt: skip
    report["results"][0]["tp_core"].update(gflops=6.0, fraction_of_matmul=0.04, model_path=path)
    (reports / "mace_speed.json").write_text(json.dumps(report))
    core = next(line for line in run_all.summary().splitlines() if "TP core" in line)
    assert "4.0 % of matmul" in core and "below 15 %" in core and "PASS" not in core
    assert "8478 radial rows for 16956 edges" in core
    assert "products 4.0 %, with the fused radial last layer 16.0 % of matmul" in core


def test_the_model_path_core_is_the_models_own_call():
    """`measure_model_path` times the last interaction's `aggregate_radial` with the arguments
    of a real forward (edges in pair order: one radial row per pair) and leaves the model as
    it was."""
    import torch
    from ase.build import molecule
    from tp_core import measure_model_path

    from equimd.potentials.data.configuration import Configuration
    from equimd.potentials.data.graph import configuration_to_graph
    from equimd.potentials.models import build_model

    torch.manual_seed(0)
    model = build_model("nequip", species=[1, 8], r_max=3.0, l_max=1, num_features=4,
                        num_layers=2, avg_num_neighbors=2.0).double()  # fmt: skip
    graph = configuration_to_graph(Configuration.from_atoms(molecule("H2O")), 3.0)
    before = model(graph)
    path = measure_model_path(model, graph, repeats=2)
    assert path is not None and path["paired"]
    assert path["edges"] == graph.edge_index.shape[1] == 6 and path["rows"] == 3
    assert path["gflops_with_radial"] > path["gflops"] > 0
    assert "aggregate_radial" not in vars(model.interactions[-1].convolution)
    torch.testing.assert_close(model(graph), before, rtol=0, atol=0)


def test_the_readme_block_is_replaced_and_the_rest_kept():
    readme = f"intro\n{run_all.README_BEGIN}\nold table\n{run_all.README_END}\nafter\n"
    new = run_all.replace_readme_block(readme, "| new | table |\n")
    assert new == f"intro\n{run_all.README_BEGIN}\n| new | table |\n{run_all.README_END}\nafter\n"
    assert run_all.replace_readme_block(new, "x") == run_all.replace_readme_block(readme, "x")
    with pytest.raises(ValueError, match="benchmarks:begin"):
        run_all.replace_readme_block("no markers", "x")


def test_the_repository_readme_has_one_benchmark_block():
    text = (ROOT / "README.md").read_text()
    assert text.count(run_all.README_BEGIN) == 1 and text.count(run_all.README_END) == 1
    assert text.index(run_all.README_BEGIN) < text.index(run_all.README_END)


def test_tp_core_flops_count_each_path_once_per_edge():
    """2x0e+2x1o ⊗ Y^{l≤1} → 0e+1o has the paths 0e⊗0e→0e, 0e⊗1o→1o, 1o⊗0e→1o, 1o⊗1o→0e;
    per path 2·U·d1·d3 + U·d3 + 2·D_sh·d1·d3 with U = 2, D_sh = 4: 14 + 42 + 114 + 38."""
    from e3nn import o3
    from tp_core import convolution_flops

    from equimd.potentials.nn.convolution import EdgeConvolution

    convolution = EdgeConvolution(
        o3.Irreps("2x0e+2x1o"), o3.Irreps.spherical_harmonics(1), o3.Irreps("0e+1o")
    )
    assert convolution_flops(convolution, 10) == 10 * (14 + 42 + 114 + 38)


def test_make_bench_runs_issue_20s_nequip_row_and_systems_can_be_restricted():
    full, water = run_all.commands(False), run_all.commands(False, ["water"])
    models = full["models"]
    assert models[models.index("--rows") + 1 : models.index("--systems")] == ["nequip"]
    assert "cu2048" in full["mace"] and "cu2048" not in water["mace"] and "water" in water["mace"]
    assert "cu2048" not in water["md_throughput"] and "3bpa" not in water["models"]
