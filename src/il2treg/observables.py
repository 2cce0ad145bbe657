"""The fixed names of what the model predicts and what a dataset may observe (DVID values)."""

from __future__ import annotations

#: Observation name -> (unit, description). The order is the model's output order.
OBSERVABLES: dict[str, tuple[str, str]] = {
    "il2_pM": ("pM", "serum IL-2 concentration (endogenous + drug)"),
    "treg_pct_cd4": ("%", "regulatory T cells as percent of CD4+ T cells, 100*Treg/(Treg+Tconv)"),
    "treg_per_uL": ("cells/uL", "regulatory T cells (CD4+CD25hiFOXP3+) in blood"),
    "tconv_per_uL": ("cells/uL", "conventional CD4+ T cells in blood"),
    "nk56bright_per_uL": ("cells/uL", "CD56bright NK cells in blood"),
    "cd25_treg_rel": ("1", "CD25 expression (MFI) on Tregs relative to the patient's baseline"),
    "sledai": ("points", "SELENA-SLEDAI disease activity (latent, continuous expected score)"),
}

OBSERVABLE_NAMES: tuple[str, ...] = tuple(OBSERVABLES)
