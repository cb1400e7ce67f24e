"""Equivariant potentials, registered by name ("nequip", "mace")."""

from equimd.potentials.models.base import MODELS, Potential, build_model, register_model

__all__ = ["MODELS", "Potential", "build_model", "register_model"]


def _register_builtin_models() -> None:
    # imported for their @register_model side effect
    import equimd.potentials.models.nequip  # noqa: F401

    try:
        import equimd.potentials.models.mace  # noqa: F401
    except ImportError:  # pragma: no cover - mace model not available in this build
        pass


_register_builtin_models()
