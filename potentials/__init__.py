"""equimd potentials: data, equivariant building blocks, models, forces/stress, training."""

__version__ = "0.1.0"
