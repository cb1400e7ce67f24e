"""Package layout: the layer folders stay at the repository's top level but install under the
one import name `equimd` (PyPI has unrelated `potentials` and `deploy` distributions).

    potentials/  -> equimd.potentials      deploy/ -> equimd.deploy
    md_drivers/  -> equimd.md_drivers      equimd/ -> equimd (command line, public API)

Everything else (metadata, dependencies, entry points) is in pyproject.toml.
"""

from setuptools import find_packages, setup

LAYERS = ("potentials", "deploy", "md_drivers")

packages = find_packages(include=["equimd", "equimd.*"])
package_dir = {"equimd": "equimd"}
for layer in LAYERS:
    package_dir[f"equimd.{layer}"] = layer
    packages += [f"equimd.{name}" for name in find_packages(include=[layer, f"{layer}.*"])]

setup(packages=packages, package_dir=package_dir)
