"""Models registered by the tests only (never by the package): `tests/conftest.py` imports
every module here before collection, so the shared contract tests (physics, export, fuzz) run
for them too. `equimd` outside the tests (the CLI, a user's script) never sees them."""

from equimd.potentials.models import import_model_modules

SKIPPED_MODULES = import_model_modules(__name__, __path__)
