"""Calibrate the Treg and CD25 response amplitudes to published figures (typical patient).

Targets (../shared/literature.md):
  * Treg fold-change 1.85 at day 7 of the LUPIL-2 induction (1.5 MIU SC daily x 5): the centre of
    the 1.5-2.5x expected for 1.5 MIU x 5-day courses (section 1.3 / 6.2, UNVERIFIED range);
  * DILfrequency, 0.26 MIU/m2 SC every 3 days (1.8 m2): Tregs +30% and Treg CD25 +25% at steady
    state (section 2, READ), taken as the time average over the last dosing interval of 12 weeks.

Free parameters: ``emax_treg`` and ``emax_cd25``; everything else stays at its literature value.
Least squares on log fold-changes (three targets, two parameters).

Usage: python scripts/calibrate_pd.py [--model NAME] [--write]
(--write updates the model's file in models/; the default model is il2_treg_sledai. A challenger
mechanism, such as il2_treg_sledai_receptor, is calibrated to the same targets.)
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.optimize import least_squares

import il2treg
from il2treg.spec import resolve_model_path, update_values

TREG_FOLD_DAY7 = 1.85
DILFREQ_TREG = 1.30
DILFREQ_CD25 = 1.25
BSA_M2 = 1.8


def outcomes(model, emax_treg: float, emax_cd25: float) -> np.ndarray:
    """(Treg fold at day 7 of LUPIL-2, mean Treg fold and mean CD25 on q3d at steady state)."""
    p = model.parameters(emax_treg=emax_treg, emax_cd25=emax_cd25)
    treg0 = p["treg0"]
    lupil2 = il2treg.simulate(model, il2treg.regimen.lupil2(), np.array([0.0, 7.0]), p)
    dose = float(il2treg.units.miu_per_m2_to_iu(0.26, BSA_M2))
    q3d = il2treg.regimen.every(dose, 3.0, 28)
    last = np.linspace(81.0, 84.0, 61)
    steady = il2treg.simulate(model, q3d, last, p)
    return np.array(
        [
            float(lupil2["treg_per_uL"][1] / treg0),
            float(np.mean(steady["treg_per_uL"]) / treg0),
            float(np.mean(steady["cd25_treg_rel"])),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="il2_treg_sledai", help="a model in models/ declaring emax_treg and emax_cd25")
    parser.add_argument("--write", action="store_true", help="write the result into the model's file")
    args = parser.parse_args()
    model_file = resolve_model_path(args.model)
    model = il2treg.load_model(model_file)
    targets = np.array([TREG_FOLD_DAY7, DILFREQ_TREG, DILFREQ_CD25])

    def residuals(log_x):
        return np.log(outcomes(model, *np.exp(log_x))) - np.log(targets)

    start = np.log([model.spec["emax_treg"].declared_value, model.spec["emax_cd25"].declared_value])
    fit = least_squares(residuals, start, diff_step=1e-4, xtol=1e-10, ftol=1e-12)
    emax_treg, emax_cd25 = (float(v) for v in np.round(np.exp(fit.x), 4))
    achieved = outcomes(model, emax_treg, emax_cd25)
    print(f"emax_treg = {emax_treg}   emax_cd25 = {emax_cd25}")
    for name, got, want in zip(("Treg fold day 7 (LUPIL-2)", "Treg fold q3d", "CD25 q3d"), achieved, targets):
        print(f"  {name:28s} {got:.3f}  (target {want:.3f})")
    p = model.parameters(emax_treg=emax_treg, emax_cd25=emax_cd25)
    for miu in (1.0, 3.0):
        daily = il2treg.simulate(model, il2treg.regimen.every(float(il2treg.units.miu_per_m2_to_iu(miu, BSA_M2)), 1.0, 84), np.array([83.5]), p)
        print(f"  Treg fold on day 83.5 of {miu:g} MIU/m2 daily (a prediction): {float(daily['treg_per_uL'][0] / p['treg0']):.2f}")
    if args.write:
        update_values(model_file, {"emax_treg": emax_treg, "emax_cd25": emax_cd25})
        print(f"wrote {model_file}")


if __name__ == "__main__":
    main()
