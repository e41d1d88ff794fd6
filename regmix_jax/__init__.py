"""regmix_jax: adversarially robust training (RegMix, D2R + CAG and baselines) in JAX/Flax."""

__version__ = "0.1.0"
