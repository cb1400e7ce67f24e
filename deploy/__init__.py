"""Deployed models: export a trained potential to one file, load it anywhere.

    from equimd.deploy import export_model, load
    from equimd.deploy.verify import verify
    export_model("best.ckpt", "model.pt", dtype="float32", format="torchscript")
    model = load("model.pt")                    # TorchScript or AOTInductor, same interface
    out = model(positions, numbers, cell, pbc)  # energy, forces, stress, ...

`load` (and `import deploy`) import only torch: no `potentials`, no training code. `export_model`
and `equimd.deploy.verify` need the model code and import `potentials` when first used.
"""

from __future__ import annotations

from typing import Any

from equimd.deploy.errors import ModelFileError, UnknownElementError
from equimd.deploy.load import DeployedModel, load, read_metadata
from equimd.deploy.metadata import MODEL_FORMAT, MODEL_FORMAT_VERSION

__all__ = [
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "DeployedModel",
    "ModelFileError",
    "UnknownElementError",
    "export_model",
    "load",
    "read_metadata",
]


def __getattr__(name: str) -> Any:
    # export pulls in the model code (potentials); keep `import deploy` light.
    if name == "export_model":
        from equimd.deploy.export import export_model

        return export_model
    raise AttributeError(f"module 'deploy' has no attribute {name!r}")
