"""float64 for everything: enabled when il2treg is imported, checked at the entry points."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from il2treg.errors import PrecisionError

jax.config.update("jax_enable_x64", True)


def require_float64() -> None:
    """Raise :class:`PrecisionError` if JAX was switched back to float32 after import."""
    if jnp.zeros(()).dtype != jnp.float64:
        raise PrecisionError(
            "JAX is running in float32; il2treg needs float64. "
            "Fix: call jax.config.update('jax_enable_x64', True) after importing il2treg."
        )
