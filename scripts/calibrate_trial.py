"""Calibrate the disease link and the LUPIL-2 site parameters to the published SRI-4 rates.

Targets (Humrich et al., Ann Rheum Dis 2022, abstract; ../shared/literature.md 1.2):
  * SRI-4 at week 12, ITT: IL-2 68% vs placebo 58% (n = 50 + 50);
  * per-protocol (without the two Bulgarian sites): 83.3% vs 51.7%, n = 53 (24 + 29);
  * placebo SRI-4 was 100% at the two Bulgarian sites: taken as a 99% probability of a >= 4-point
    SLEDAI fall on placebo there (the BILAG/PGA veto caps SRI-4 itself at 95.6%).

Free parameters:
  * models/il2_treg_sledai.toml: ``pmax`` (standard-of-care improvement) and ``imax`` (maximal
    Treg-driven effect). ``kd`` and ``r50`` stay at their literature defaults: with one assessment
    visit they trade off with ``imax`` and are not identified by these targets.
  * models/lupil2_trial.toml: ``high_site_share``, ``dropout`` and ``high_site_pmax``.

Objective (deterministic, smooth): a fixed virtual population (common random numbers, fixed
seed) is solved under the LUPIL-2 regimen three times: without drug effect or standard of care
(imax = pmax = 0), with pmax = 1, and with imax = 1. The drug effect on SLEDAI is linear in imax
(the observable's imax * sledai0 * effect) and the standard-of-care term is linear in pmax, so
the latent week-12 score of every patient is known exactly for any (pmax, imax, site shift)
without solving again. The expected SRI-4 rates then follow from
the exact score probabilities of il2treg.trial.response_probability (entry by rejection on the
reported baseline, even-score rounding, visit noise) times the veto probability, with dropout and
site shares as in il2treg.trial.simulate_trial. Residuals are scaled by the binomial standard
errors of the published figures; scipy's least_squares fits them.

Afterwards the script checks the fit by simulating --check replicate trials (seed 0) with
il2treg.trial.simulate_trial and prints their mean rates and power.

Another mechanism (``--model NAME``, a file in models/) gets its own ``pmax`` and ``imax`` with
the trial design held at models/lupil2_trial.toml's values (the sites, dropout and high-response
share describe the trial, not the mechanism): it then reproduces the same SRI-4 rates.

Usage: python scripts/calibrate_trial.py [--model NAME] [--write] [--population N] [--check N]
       (--write updates the value lines of the model's file, and for the reference model those of
       models/lupil2_trial.toml too)
"""

from __future__ import annotations

import argparse
import time

import jax.numpy as jnp
import numpy as np
from scipy.optimize import least_squares

import il2treg
from il2treg import trial
from il2treg.spec import MODELS_DIR, resolve_model_path, update_values

REFERENCE = "il2_treg_sledai"
DESIGN_FILE = MODELS_DIR / "lupil2_trial.toml"

#: (analysis, arm) -> (published SRI-4 rate, patients it was computed on).
TARGETS = {
    ("itt", "il2"): (0.68, 50),
    ("itt", "placebo"): (0.58, 50),
    ("per_protocol", "il2"): (0.833, 24),
    ("per_protocol", "placebo"): (0.517, 29),
}
PP_SIZE = 53
HIGH_SITE_FALL = 0.99
HIGH_SITE_FALL_SE = 0.005
POPULATION_SEED = 20221216  # Humrich et al. published online 16 Aug 2022; any fixed number will do

#: name -> (file, lower bound, upper bound, start)
FREE = {
    "pmax": ("model", 0.0, 15.0, None),
    "imax": ("model", 0.0, 1.0, None),
    "high_site_share": ("design", 0.0, 0.9, None),
    "dropout": ("design", 0.0, 0.6, None),
    "high_site_pmax": ("design", 0.0, 30.0, None),
}


class Objective:
    """Expected SRI-4 rates of the design as a smooth function of the free parameters."""

    def __init__(self, model: il2treg.Model, design: trial.TrialDesign, n: int):
        self.design = design
        days = jnp.asarray([0.0, 7.0 * design.assessment_week])
        params = il2treg.sample_population(model, n, seed=POPULATION_SEED)

        def week12(**values):
            sim = il2treg.simulate(model, design.regimens["il2"], days, params.replace(**values))
            if not bool(np.all(np.asarray(sim.ok))):
                raise RuntimeError("some calibration patients failed to solve; check the model file")
            return np.asarray(sim["sledai"])[:, -1]

        self.l0 = np.asarray(params.as_dict()["sledai0"])
        # the model's SLEDAI terms read off its solves: the drug's at imax = 1 (the difference from
        # imax = 0), the standard of care's per point of pmax (pmax = 1 against pmax = 0)
        untreated = week12(imax=0.0, pmax=0.0)
        self.unit_soc = week12(imax=0.0, pmax=1.0) - untreated
        self.drug_per_imax = week12(imax=1.0, pmax=0.0) - untreated
        both = week12(imax=1.0, pmax=1.0)  # the objective assumes the terms add: check it for this model
        if not np.allclose(
            both, untreated + self.unit_soc + self.drug_per_imax, rtol=0.0, atol=1e-9 * np.max(np.abs(self.l0))
        ):
            raise RuntimeError(f"{model.name}: its SLEDAI is not sledai0 + pmax * (standard of care) + imax * (drug effect); "
                               "this calibration does not apply. Fix: calibrate it by simulation instead.")  # fmt: skip
        rng = np.random.default_rng(POPULATION_SEED)
        self.z_site = rng.standard_normal(n)  # site effects, integrated over by fixed draws
        self.p_entry = trial.response_probability(self.l0, self.l0, design)[0]

    def _rate(self, pmax: float, imax: float, shift: float, active: bool) -> float:
        """P(SLEDAI fall >= 4 | entered) for one arm and site type."""
        total_pmax = pmax + shift + self.design.site_pmax_sd * self.z_site
        latent = self.l0 + total_pmax * self.unit_soc + (imax * self.drug_per_imax if active else 0.0)
        _, both = trial.response_probability(self.l0, latent, self.design)
        return float(both.sum() / self.p_entry.sum())

    def outcomes(self, x: dict[str, float]) -> dict:
        d = self.design
        keep = d.bilag_pga_keep
        misses = d.assessment_index / (len(d.visit_weeks) - 1)  # dropouts that miss the assessment
        completed = 1.0 - x["dropout"] * misses
        out = {}
        for arm, active in (("il2", True), ("placebo", False)):
            ordinary = keep * self._rate(x["pmax"], x["imax"], 0.0, active)
            high = keep * self._rate(x["pmax"], x["imax"], x["high_site_pmax"], active)
            w = x["high_site_share"]
            out[("itt", arm)] = completed * (w * high + (1.0 - w) * ordinary)
            out[("per_protocol", arm)] = ordinary
        out["pp_size"] = d.n_patients * (1.0 - x["high_site_share"]) * completed
        out["high_site_fall_placebo"] = self._rate(x["pmax"], x["imax"], x["high_site_pmax"], False)
        return out

    def residuals(self, x: dict[str, float]) -> np.ndarray:
        o = self.outcomes(x)
        res = [(o[key] - rate) / np.sqrt(rate * (1 - rate) / n) for key, (rate, n) in TARGETS.items()]
        res.append((o["pp_size"] - PP_SIZE) / np.sqrt(PP_SIZE * (1 - PP_SIZE / 100)))
        res.append((o["high_site_fall_placebo"] - HIGH_SITE_FALL) / HIGH_SITE_FALL_SE)
        return np.asarray(res)


def _rounded(x: float) -> float:
    return float(f"{x:.4g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the result into models/")
    parser.add_argument("--population", type=int, default=4000, help="calibration patients (default 4000)")
    parser.add_argument("--check", type=int, default=500, help="replicate trials of the check (0: none)")
    parser.add_argument("--model", default=REFERENCE, help=f"the mechanism's file in models/ (default {REFERENCE})")
    args = parser.parse_args()

    model_file = resolve_model_path(args.model)
    reference = model_file.resolve() == resolve_model_path(REFERENCE).resolve()
    model = il2treg.load_model(model_file)
    design = trial.load_design(DESIGN_FILE)
    start_values = {
        "pmax": model.spec["pmax"].declared_value,
        "imax": model.spec["imax"].declared_value,
        "high_site_share": design.high_site_share,
        "dropout": design.dropout,
        "high_site_pmax": design.high_site_pmax,
    }
    # another mechanism: only its own link; the design stays the reference calibration's
    names = [k for k in FREE if reference or FREE[k][0] == "model"]
    held = {k: start_values[k] for k in FREE if k not in names}
    t0 = time.perf_counter()
    objective = Objective(model, design, args.population)
    print(f"calibration population: {args.population} patients solved in {time.perf_counter() - t0:.1f} s")

    def residuals(v):
        return objective.residuals({**held, **dict(zip(names, v))})

    scale = {"pmax": 1.0, "imax": 0.1, "high_site_share": 0.1, "dropout": 0.1, "high_site_pmax": 1.0}
    fit = least_squares(
        residuals,
        x0=[start_values[k] for k in names],
        bounds=([FREE[k][1] for k in names], [FREE[k][2] for k in names]),
        x_scale=[scale[k] for k in names],
        diff_step=1e-4,
    )
    result = {**held, **{k: _rounded(v) for k, v in zip(names, fit.x)}}
    outcomes = objective.outcomes(result)
    print(f"least_squares: {fit.message} ({fit.nfev} evaluations), cost {fit.cost:.4f}")
    print("\nfitted parameters (rounded to 4 significant digits, as written):")
    for k in FREE:
        unit = model.spec[k].unit if FREE[k][0] == "model" else trial.DESIGN_UNITS[k]
        how = f"start {start_values[k]:g}" if k in names else "held"
        print(f"  {k:<16} {result[k]:>9g} {unit:<7} ({how}; {FREE[k][0]} file)")
    print("\nexpected outcome at the fitted values vs published:")
    for key, (rate, _) in TARGETS.items():
        print(f"  SRI-4 {key[0]:<13} {key[1]:<8} {100 * outcomes[key]:6.1f}%   published {100 * rate:5.1f}%")
    print(f"  per-protocol size           {outcomes['pp_size']:6.1f}    published {PP_SIZE}")
    print(f"  P(fall >= 4), placebo, high-response sites {100 * outcomes['high_site_fall_placebo']:.1f}%"
          f" (target {100 * HIGH_SITE_FALL:.0f}%: every placebo patient responded)")

    if args.write:
        update_values(model_file, {k: result[k] for k in names if FREE[k][0] == "model"})
        written = [model_file.name]
        if reference:
            update_values(DESIGN_FILE, {k: result[k] for k in names if FREE[k][0] == "design"})
            written.append(DESIGN_FILE.name)
        print(f"\nwrote {' and '.join(written)}")
        model = il2treg.load_model(model_file)
        design = trial.load_design(DESIGN_FILE)
    else:
        model = model.with_values(**{k: result[k] for k in names if FREE[k][0] == "model"})
        design = design.replace(**{k: result[k] for k in names if FREE[k][0] == "design"})

    if args.check:
        t0 = time.perf_counter()
        check = trial.simulate_trial(design, args.check, seed=0, model=model)
        elapsed = time.perf_counter() - t0
        print(f"\ncheck: simulate_trial(design, {args.check}, seed=0) in {elapsed:.1f} s")
        print(trial.format_summary(check.summary()))
        print(f"mean per-protocol size {check.n[1].sum(-1).mean():.1f} (published {PP_SIZE})")


if __name__ == "__main__":
    main()
