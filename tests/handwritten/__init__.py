"""The IL-2 -> Treg -> SLEDAI model as hand-written JAX code: the reference its model file
(``models/il2_treg_sledai.toml``) and variants are tested against (tests/test_model_format.py,
tests/test_sbml.py), and the code the engine ran before models were data.

:func:`model` joins it to the reference file's parameters: ``model(Structure(transit_compartments=0))``
is the hand-written counterpart of ``load_model("il2_treg_sledai_no_delay")``.
"""

from __future__ import annotations

import il2treg
from handwritten.system import PARAMETER_NAMES, HandWritten, Structure


def model(structure: Structure | None = None) -> il2treg.Model:
    """The reference model's parameters with the hand-written equations of ``structure`` (default: the reference's)."""
    structure = Structure() if structure is None else structure
    spec = il2treg.load_model().spec
    assert spec.names == PARAMETER_NAMES, "the reference file's parameters are the hand-written model's, in its order"
    return il2treg.Model(spec, HandWritten(structure))


__all__ = ["PARAMETER_NAMES", "HandWritten", "Structure", "model"]
