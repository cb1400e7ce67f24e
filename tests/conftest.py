"""Session set-up shared by every test file.

`tests.models` is imported first: the models it registers (tests/models/, test-only) are in
the registry before any test module is collected, so the contract tests parametrized from the
registry (tests/model_zoo.py) include them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import tests.models  # noqa: F401 - registers the test-only models


@pytest.fixture(scope="session")
def zoo_model_file(tmp_path_factory) -> Callable[..., Path]:
    """zoo_model_file(name, dtype, format="torchscript") -> Path of the zoo model `name`
    (`tests.model_zoo.MODEL_FACTORIES`) exported once per session, shared by the test files
    (exporting is the slow part; the files are only read)."""
    from equimd.deploy.export import export_model
    from tests.model_zoo import MODEL_FACTORIES

    directory = tmp_path_factory.mktemp("zoo_model_files")
    files: dict[tuple[str, str, str], Path] = {}

    def export(name: str, dtype: str | torch.dtype, format: str = "torchscript") -> Path:
        dtype_name = str(dtype).removeprefix("torch.")
        key = (name, dtype_name, format)
        if key not in files:
            suffix = ".pt2" if format == "aoti" else ".pt"
            path = directory / f"{name}_{dtype_name}{suffix}"
            files[key] = export_model(MODEL_FACTORIES[name](), path, dtype=dtype, format=format)
        return files[key]

    return export
