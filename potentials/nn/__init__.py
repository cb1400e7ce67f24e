"""Shared equivariant building blocks (radial basis, spherical harmonics, tensor products, ...)."""
