"""Native sources built on first use (``dnnl_conv.cc``: see :mod:`jit_jax.models.onednn`)."""
