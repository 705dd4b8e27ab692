"""jit-jax: zero-shot machine unlearning (JiT) in JAX/Flax NNX."""

from jit_jax.malloc import retain_freed_memory as _retain_freed_memory

_retain_freed_memory()  # before JAX starts its CPU backend: see jit_jax.malloc

__version__ = "0.1.0"
