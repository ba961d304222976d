"""Use ssl_core's kernels from other frameworks: PyTorch (ssl_core.integrations.torch) and JAX (ssl_core.integrations.jax)."""
