"""What the multi-study model predicts beside the reference: the typical patient under the
regimens the defaults were calibrated to and those the issue found flat.

For models/il2_treg_sledai.toml (the package's default) and models/il2_treg_sledai_multistudy.toml
(the mechanism of lowest AIC in the multi-study comparison, with its estimates), the typical patient:
  * Treg fold at day 7 of the LUPIL-2 induction (the reference's calibration target 1.85, inside
    an UNVERIFIED 1.5-2.5; literature.md 1.3);
  * DILfrequency's 0.26 MIU/m2 every 3 days (1.8 m2) at steady state, the mean over days 81-84:
    Treg fold and Treg CD25 (published +30% and +25%, READ);
  * 1.8 MIU daily for 12 weeks (1 MIU/m2, Koreth 2011's daily dose, which it gave for 8 weeks):
    Treg fold at days 28 and 84 (Koreth 2011: Treg median > 8-fold at week 4, a bound) and
    CD56bright NK fold at day 84; the issue found the reference flat near 3x and 1.7x there;
  * one 0.18 MIU dose: the largest Treg fold over 21 days (the reference: +3.5%, in the issue);
  * the population's baseline Treg % of CD4, mean and SD over 20,000 patients (seed 1): what the
    mean of a study arm's 64 virtual patients in scripts/fit_multistudy.py scatters about.

A solve that fails is an error, not a number.

Writes fits/multistudy/predictions.md (atomically) and prints it.

Usage: python scripts/mechanism_predictions.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import il2treg
from il2treg import regimen as rg
from il2treg._io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("il2_treg_sledai", "il2_treg_sledai_multistudy")
BSA_M2 = 1.8


def _solved(model, regimen, times):
    sim = il2treg.simulate(model, regimen, times)
    if not bool(np.all(np.asarray(sim.ok))):
        raise RuntimeError(
            f"{model.name}: the typical patient failed to solve under {regimen.name or 'a regimen'}; check the model file"
        )
    return sim


def predictions(model) -> dict[str, float]:
    """The typical patient's numbers listed in the module docstring."""
    out = {}
    sim = _solved(model, rg.lupil2(), np.array([0.0, 7.0]))
    out["LUPIL-2: Treg fold, day 7"] = float(sim["treg_per_uL"][1] / sim["treg_per_uL"][0])
    last = np.concatenate([[0.0], np.linspace(81.0, 84.0, 61)])
    sim = _solved(model, rg.dilfrequency(0.26e6, BSA_M2), last)
    out["DILfrequency q3d: Treg fold, steady state"] = float(np.mean(sim["treg_per_uL"][1:]) / sim["treg_per_uL"][0])
    out["DILfrequency q3d: Treg CD25, steady state"] = float(np.mean(sim["cd25_treg_rel"][1:]))
    sim = _solved(model, rg.daily(1.8e6, 84), np.array([0.0, 28.0, 84.0]))
    out["1.8 MIU daily: Treg fold, day 28"] = float(sim["treg_per_uL"][1] / sim["treg_per_uL"][0])
    out["1.8 MIU daily: Treg fold, day 84"] = float(sim["treg_per_uL"][2] / sim["treg_per_uL"][0])
    out["1.8 MIU daily: CD56bright NK fold, day 84"] = float(sim["nk56bright_per_uL"][2] / sim["nk56bright_per_uL"][0])
    grid = np.linspace(0.0, 21.0, 169)
    sim = _solved(model, rg.every(0.18e6, 1.0, 1), grid)
    out["one 0.18 MIU dose: largest Treg fold, 21 days"] = float(np.max(sim["treg_per_uL"]) / sim["treg_per_uL"][0])
    population = il2treg.simulate(model, rg.none(), np.array([0.0]), il2treg.sample_population(model, 20_000, seed=1))
    baseline = np.asarray(population["treg_pct_cd4"])[:, 0]
    out["baseline Treg % of CD4: population mean (20,000 patients)"] = float(baseline.mean())
    out["baseline Treg % of CD4: population SD"] = float(baseline.std())
    return out


def main() -> None:
    table = {name: predictions(il2treg.load_model(name)) for name in MODELS}
    rows = list(table[MODELS[0]])
    lines = ["# The multi-study model beside the reference: the typical patient", "",
             "Written by `scripts/mechanism_predictions.py`.", "",
             "| regimen: quantity | " + " | ".join(MODELS) + " |", "|---|" + "---|" * len(MODELS)]  # fmt: skip
    lines += [f"| {row} | " + " | ".join(f"{table[m][row]:.3f}" for m in MODELS) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    atomic_write_text(ROOT / "fits" / "multistudy" / "predictions.md", text)
    print(text)


if __name__ == "__main__":
    main()
