r"""Parameter recovery and confidence-interval coverage of the population fit (FOCE-I).

Simulates replicate 100-patient LUPIL-2-like cohorts with known parameters
(``il2treg.datasets.simulate_cohort``, seeds ``--seed0`` .. ``--seed0 + R - 1``), fits each with
the reference fit specification ``fits/lupil2_virtual/fit.toml`` (only the data changed), and
compares the estimates with the values that generated the data:

- fixed effects: the model file's typical values; the site coefficient: the design's
  ``high_site_pmax``;
- between-patient CV%: the model file's ``cv_percent``; intervals are checked on omega;
- residual SDs: the assay CV each observation type was simulated with (10% for the cell
  readouts, 20% for IL-2) for the proportional errors (the data carry
  log-normal noise, so ``sigma_prop`` is the CV only to first order), its log-scale SD
  :math:`\sqrt{\log(1 + CV^2)}` with ``--log-errors`` (the error model the data were made with),
  and ``sledai_noise_sd`` for SLEDAI.

By default the cohorts come from the LUPIL-2 design as it is, so the fit is misspecified as a
real analysis would be: the model file gives between-patient variability to ec50_treg, which the
fit does not estimate (it ends in omega_emax_treg and the CD25 residual; the reference fit
estimates that of ka, CL and V since 2026-12-05);
``sledai0`` is drawn by rejection until the reported baseline score meets the entry criterion (a
truncated distribution); and each site shifts ``pmax`` by a random amount that the fit has no term
for. ``--matched`` removes the three (variability only on the fit's random effects, no site
effects, no entry criterion): the fit model is then the generating model, which is what tests the
estimator itself.

Prints, per parameter: the truth, the mean estimate and its relative bias, the share of
replicates within 15% (fixed effects) or whose CV% is within 30% of the truth (random effects),
and the coverage of the 95% intervals. Per-replicate numbers go to ``--json``.

Usage: python benchmarks/recovery.py [--replicates 20] [--seed0 1000] [--matched] [--log-errors] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from il2treg.datasets.cohort import ASSAY_CV_PERCENT, simulate_cohort, write_cohort
from il2treg.fit.run import compute_fit
from il2treg.fit.spec import read_fit_spec
from il2treg.model import Model
from il2treg.trial import load_design

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "fits" / "lupil2_virtual" / "fit.toml"


def truths(spec, design) -> dict[str, float]:
    """The generating value of every estimated quantity, in the units the results report."""
    model = spec.model.spec
    out = {}
    for p in spec.parameters:
        out[p.name] = float(model[p.name].value)
        if p.cv_percent is not None:
            cv = float(model[p.name].cv_percent) / 100.0
            out[f"omega_{p.name}"] = math.sqrt(math.log1p(cv**2))
    for c in spec.covariates:
        out[c.effect.name] = float(design.high_site_pmax)
    for e in spec.errors:
        # the assay CV each observation type was simulated with (the design's for Treg readouts)
        cv = float(design.treg_assay_cv if e.dvid.startswith("treg_") else ASSAY_CV_PERCENT.get(e.dvid, design.treg_assay_cv)) / 100.0
        if e.kind == "proportional":
            out[f"sigma_prop_{e.dvid}"] = cv
        elif e.kind == "log":
            out[f"sigma_add_{e.dvid}"] = math.sqrt(math.log1p(cv**2))
        elif e.kind == "ordinal":
            out[f"sigma_add_{e.dvid}"] = float(design.sledai_noise_sd)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=20)
    parser.add_argument("--seed0", type=int, default=1000)
    parser.add_argument("--matched", action="store_true", help="simulate from the fit's own model (see above)")
    parser.add_argument("--log-errors", action="store_true", help="fit the biomarkers with the log (LTBS) error model, as the data were made")
    parser.add_argument("--json", type=Path, default=None, help="write every replicate's estimates here")
    args = parser.parse_args()
    if args.replicates < 1:
        parser.error(f"--replicates must be at least 1, got {args.replicates}")
    if args.seed0 < 0:
        parser.error(f"--seed0 must be a non-negative integer, got {args.seed0}")

    design = load_design("lupil2")
    model = None
    if args.matched:
        design = design.replace(site_pmax_sd=0.0, entry_sledai_min=0.0)
        fitted = read_fit_spec(SPEC)
        random = {p.name for p in fitted.parameters if p.cv_percent is not None}
        base = fitted.model.spec
        params = tuple(p if p.name in random else dataclasses.replace(p, cv_percent=0.0) for p in base.params)
        model = Model(dataclasses.replace(base, params=params))
    template = SPEC.read_text()
    assert 'data = "il2treg:lupil2_virtual"' in template
    rows = []
    truth = None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.replicates):
            seed = args.seed0 + r
            table = simulate_cohort(100, seed, design=design, model=model)
            csv = Path(tmp) / f"cohort_{seed}.csv"
            write_cohort(table, csv)
            fit_file = Path(tmp) / f"fit_{seed}.toml"
            text = template.replace('data = "il2treg:lupil2_virtual"', f'data = "{csv.name}"')
            if args.log_errors:  # the cohort's assay noise is log-normal: fit it on the log scale
                text = text.replace('kind = "proportional"\nsigma_prop = 0.1', 'kind = "log"\nsigma_add = 0.1')
            fit_file.write_text(text)
            spec = read_fit_spec(fit_file)
            truth = truth or truths(spec, design)
            t = time.perf_counter()
            result = compute_fit(spec)
            wall = time.perf_counter() - t
            est = result.estimates.set_index("parameter")
            row = {"seed": seed, "converged": result.converged, "iterations": result.iterations, "ofv": result.ofv,
                   "wall_s": wall, "timing": result.timing,
                   "flagged": int(sum(1 for s in result.individual["status"] if s != "converged")) if "status" in result.individual else None,
                   "estimates": {k: {c: float(est.loc[k, c]) for c in ("estimate", "ci_low", "ci_high", "cv_percent")} for k in truth}}  # fmt: skip
            rows.append(row)
            print(f"replicate {r + 1}/{args.replicates} (seed {seed}): OFV {result.ofv:.2f}, {result.iterations} iterations, "
                  f"converged {result.converged}, {wall:.0f} s", flush=True)  # fmt: skip

    print()
    print(f"il2treg parameter recovery ({datetime.datetime.now().isoformat(timespec='seconds')}, {platform.machine()}, jax {jax.__version__})")
    setting = "matched (fit model = generating model)" if args.matched else "LUPIL-2 design as is (misspecified, see docstring)"
    setting += ", log error model for the biomarkers" if args.log_errors else ""
    print(f"{len(rows)} replicate cohorts of 100 patients, {setting}, fit {SPEC.relative_to(ROOT)}; converged: {sum(r['converged'] for r in rows)}/{len(rows)}")
    print()
    print(f"{'parameter':34s}{'truth':>10s}{'mean est':>10s}{'bias %':>8s}{'within':>8s}{'CI cover':>10s}")
    summary = {}
    for name, value in truth.items():
        est = np.array([r["estimates"][name]["estimate"] for r in rows])
        lo = np.array([r["estimates"][name]["ci_low"] for r in rows])
        hi = np.array([r["estimates"][name]["ci_high"] for r in rows])
        cover = float(np.mean((lo <= value) & (value <= hi)))
        if name.startswith("omega_"):
            cv_true = 100 * math.sqrt(math.expm1(value**2))
            cv = np.array([r["estimates"][name]["cv_percent"] for r in rows])
            within = float(np.mean(np.abs(cv - cv_true) <= 0.3 * cv_true))
            rule = "CV% within 30%"
        else:
            within = float(np.mean(np.abs(est - value) <= 0.15 * abs(value)))
            rule = "within 15%"
        bias = 100 * (float(np.mean(est)) - value) / abs(value)
        summary[name] = {"truth": value, "mean_estimate": float(np.mean(est)), "bias_percent": bias,
                         "share_within": within, "rule": rule, "ci_coverage": cover}  # fmt: skip
        print(f"{name:34s}{value:10.4g}{np.mean(est):10.4g}{bias:8.1f}{100 * within:7.0f}%{100 * cover:9.0f}%")
    walls = [r["wall_s"] for r in rows]
    print()
    print("within: share of replicates whose estimate is within 15% of the truth (CV% within 30% for omegas)")
    print(f"wall time per replicate: median {np.median(walls):.0f} s (the first includes compilation: {walls[0]:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"date": datetime.datetime.now().isoformat(timespec="seconds"), "jax": jax.__version__,
                                         "spec": str(SPEC.relative_to(ROOT)), "matched": args.matched, "log_errors": args.log_errors, "summary": summary, "replicates": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
