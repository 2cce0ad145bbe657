"""Calibrate the Treg EC50 of a PEGylated IL-2 (rezpegaldesleukin, NKTR-358) to its published duration.

Target (../shared/literature.md 2.3; Fanton et al., J Transl Autoimmun 2022;5:100152, READ): at the
highest doses "CD25bright Tregs rose 12-17-fold over baseline, sustained for 20-30 days". Read here
as: after a single 28 ug/kg SC dose (the top single dose; 70 kg), the typical patient's Treg fold
stays above 2 for 25 days, the middle of 20-30. The fold threshold 2 is an assumption.

Free parameter: ``ec50_treg``; ``ec50_nk`` and ``ec50_tconv`` keep their ratios to it (10 and 300,
models/peg_il2_treg_sledai.toml). The peak fold is then a prediction, printed beside the published
12-17-fold: the mechanism's Treg plateau, not this script, decides whether it can be reached.

Usage: python scripts/calibrate_peg.py [--model NAME] [--base MECHANISM] [--write]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.optimize import brentq

import il2treg
from il2treg.spec import resolve_model_path, update_values

DOSE_UG_PER_KG = 28.0
WEIGHT_KG = 70.0
SUSTAINED_DAYS = 25.0
FOLD_THRESHOLD = 2.0
NK_RATIO = 10.0
TCONV_RATIO = 300.0
TIMES = np.linspace(0.0, 90.0, 901)


def treg_fold(model, ec50_treg: float) -> np.ndarray:
    """Typical Treg fold over :data:`TIMES` (days) after the single top dose."""
    p = model.parameters(ec50_treg=ec50_treg, ec50_nk=NK_RATIO * ec50_treg, ec50_tconv=TCONV_RATIO * ec50_treg)
    dose = il2treg.regimen.every(DOSE_UG_PER_KG * WEIGHT_KG, 14.0, 1)
    sim = il2treg.simulate(model, dose, TIMES, p)
    return np.asarray(sim["treg_per_uL"]) / float(p["treg0"])


def days_above(fold: np.ndarray) -> float:
    """The last time (days, interpolated) at which the fold is above the threshold; 0 if never."""
    above = np.nonzero(fold > FOLD_THRESHOLD)[0]
    if above.size == 0:
        return 0.0
    k = above[-1]
    if k + 1 == TIMES.size:
        return float(TIMES[-1])
    t0, t1, f0, f1 = TIMES[k], TIMES[k + 1], fold[k], fold[k + 1]
    return float(t0 + (f0 - FOLD_THRESHOLD) / (f0 - f1) * (t1 - t0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="peg_il2_treg_sledai", help="a model in models/ with ug doses and ec50_treg/_nk/_tconv")
    parser.add_argument("--base", default=None, help="apply the variant to this mechanism instead of its file's base (no --write)")
    parser.add_argument("--write", action="store_true", help="write the result into the model's file")
    args = parser.parse_args()
    if args.base and args.write:
        parser.error("--write writes the variant's own file, whose default base is its own: drop --base")
    model_file = resolve_model_path(args.model)
    model = il2treg.load_model(model_file, base=args.base)
    log_ec50 = brentq(lambda x: days_above(treg_fold(model, np.exp(x))) - SUSTAINED_DAYS, np.log(10.0), np.log(1e5), xtol=1e-6)
    ec50 = float(np.round(np.exp(log_ec50), 2))
    fold = treg_fold(model, ec50)
    print(f"ec50_treg = {ec50} pM   ec50_nk = {NK_RATIO * ec50:g}   ec50_tconv = {TCONV_RATIO * ec50:g}")
    print(f"  Treg fold above {FOLD_THRESHOLD:g} for {days_above(fold):.2f} days (target {SUSTAINED_DAYS:g})")
    print(f"  peak Treg fold {fold.max():.2f} on day {TIMES[fold.argmax()]:.1f} (published: 12-17 at the highest doses)")
    if args.write:
        update_values(model_file, {"ec50_treg": ec50, "ec50_nk": NK_RATIO * ec50, "ec50_tconv": TCONV_RATIO * ec50})
        print(f"wrote {model_file}")


if __name__ == "__main__":
    main()
