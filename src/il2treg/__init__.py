"""il2treg: differentiable models of low-dose IL-2 therapy in SLE."""

from il2treg import _precision  # noqa: F401  (enables float64 first)
from il2treg import errors, units
from il2treg.regimen import Regimen

__all__ = ["errors", "units", "Regimen"]
__version__ = "0.1.0"
