"""Data shipped with il2treg: published summary tables with their citations."""

from il2treg.datasets.reference import reference, reference_names

__all__ = ["reference", "reference_names"]
