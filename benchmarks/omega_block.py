r"""Recovery of a correlation between random effects: a block :math:`\Omega` (``[[omega_block]]``).

Simulates ``--replicates`` cohorts of ``--patients`` patients from the one-compartment IV model
(``models/pk_1cmt_iv.toml``: CL 2 L/h, V 20 L) with log-normal random effects on CL and V of
SDs :math:`\omega_{CL} = 0.3`, :math:`\omega_V = 0.2` and correlation ``--rho`` (0.6), a 100 mg
bolus at time 0, samples at 0.5, 1, 2, 4, 8, 12 and 24 h and a proportional residual error of
10%. The concentrations come from the closed form :math:`C(t) = D/V\,e^{-CL\,t/V}` (not from
il2treg's solver), are written as a NONMEM dataset in hours, and fitted with a fit file that puts
CL and V in one omega block (FOCE-I by default, ``--method saem`` for SAEM).

Prints, per replicate, the estimated correlation, its 95% interval and the omegas; then the
mean, the largest error and the coverage. The issue's criterion: the estimate recovers the
correlation within 0.15. Per-replicate numbers go to ``--json``.

Usage: python benchmarks/omega_block.py [--replicates 10] [--patients 100] [--rho 0.6] [--method foce] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from replicates import fit_replicates  # benchmarks/replicates.py: the loop iov.py shares

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "pk_1cmt_iv.toml"
TIMES_H = (0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0)
DOSE_MG = 100.0
CL, V = 2.0, 20.0  # L/h, L: the model file's values
OMEGA = (0.3, 0.2)
SIGMA_PROP = 0.1

FIT = """\
# written by benchmarks/omega_block.py
model = "{model}"
data = "data.csv"
time_unit = "h"

[parameters.CL]
cv_percent = 30
[parameters.V]
cv_percent = 20

[[omega_block]]
parameters = ["CL", "V"]
correlation = 0.1

[error.conc]
kind = "proportional"
sigma_prop = 0.1
"""


def simulate(n: int, rho: float, seed: int) -> str:
    """A NONMEM dataset (CSV text, TIME in hours) of ``n`` patients."""
    rng = np.random.default_rng(seed)
    cov = np.array([[OMEGA[0] ** 2, rho * OMEGA[0] * OMEGA[1]], [rho * OMEGA[0] * OMEGA[1], OMEGA[1] ** 2]])
    eta = rng.multivariate_normal(np.zeros(2), cov, size=n)
    lines = ["ID,TIME,AMT,DV,MDV"]
    for i in range(n):
        cl, v = CL * np.exp(eta[i, 0]), V * np.exp(eta[i, 1])
        lines.append(f"{i + 1},0,{DOSE_MG:g},0,1")
        for t in TIMES_H:
            c = DOSE_MG / v * np.exp(-cl * t / v)
            lines.append(f"{i + 1},{t:g},0,{c * (1.0 + SIGMA_PROP * rng.standard_normal()):.8g},0")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=10)
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--rho", type=float, default=0.6)
    parser.add_argument("--seed0", type=int, default=2000)
    parser.add_argument("--method", choices=("foce", "saem"), default="foce")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.replicates < 1 or args.patients < 2 or not -1.0 < args.rho < 1.0:
        parser.error("need --replicates >= 1, --patients >= 2 and -1 < --rho < 1")

    def row(est):
        corr = est.loc["corr_CL_V"]
        return {"corr": float(corr["estimate"]), "corr_se": float(corr["se"]), "ci_low": float(corr["ci_low"]), "ci_high": float(corr["ci_high"]),
                "omega_CL": float(est.loc["omega_CL", "estimate"]), "omega_V": float(est.loc["omega_V", "estimate"])}  # fmt: skip

    describe = lambda r: f"corr {r['corr']:.3f} (95% CI {r['ci_low']:.3f} to {r['ci_high']:.3f}), omega_CL {r['omega_CL']:.3f}, omega_V {r['omega_V']:.3f}"
    rows = fit_replicates(args.replicates, args.seed0, args.method, lambda seed: simulate(args.patients, args.rho, seed), FIT.format(model=MODEL.as_posix()), row, describe)

    corr = np.array([r["corr"] for r in rows])
    covered = np.mean([r["ci_low"] <= args.rho <= r["ci_high"] for r in rows])
    print()
    print(f"il2treg omega-block recovery ({datetime.datetime.now().isoformat(timespec='seconds')}, {platform.machine()}, jax {jax.__version__}), "
          f"method {args.method}: {len(rows)} cohorts of {args.patients} patients, true correlation {args.rho:g}")  # fmt: skip
    print(f"estimated correlation: mean {corr.mean():.3f}, SD {corr.std(ddof=1) if len(corr) > 1 else float('nan'):.3f}, "
          f"largest error {np.max(np.abs(corr - args.rho)):.3f}; mean within 0.15: {abs(corr.mean() - args.rho) <= 0.15}; "
          f"every replicate within 0.15: {bool(np.all(np.abs(corr - args.rho) <= 0.15))}; 95% CI coverage {covered:.2f}")  # fmt: skip
    print(f"omega_CL mean {np.mean([r['omega_CL'] for r in rows]):.3f} (truth {OMEGA[0]}), omega_V mean {np.mean([r['omega_V'] for r in rows]):.3f} (truth {OMEGA[1]}); "
          f"{sum(r['converged'] for r in rows)}/{len(rows)} converged; median fit {np.median([r['wall_s'] for r in rows]):.1f} s")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "replicates": rows}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
