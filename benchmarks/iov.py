r"""Recovery of inter-occasion variability (IOV, ``iov_cv_percent`` and an ``OCC`` column).

Simulates ``--replicates`` cohorts of ``--patients`` patients of the one-compartment IV model
(``models/pk_1cmt_iv.toml``: CL 2 L/h, V 20 L) over three occasions: a 100 mg bolus at 0, 48
and 96 h, each opening an occasion (``OCC`` 1, 2, 3), with samples 0.5, 2, 6, 12 and 24 h after
each dose. Clearance varies between patients (:math:`\omega_{CL} = 0.3`) and between occasions
(:math:`\omega_{IOV,CL}` = ``--omega-iov``, 0.15), V between patients (:math:`\omega_V = 0.2`);
the residual error is proportional, 10%. The concentrations come from the closed form, stepped
from dose to dose with each occasion's clearance (not from il2treg's solver), written as a NONMEM
dataset in hours, and fitted (FOCE-I by default, ``--method saem`` for SAEM) with a fit file that
gives CL ``cv_percent`` and ``iov_cv_percent``.

Prints, per replicate, the estimated inter-occasion SD of CL with its 95% interval and the
between-patient SDs; then the mean, the largest relative error and the coverage. Per-replicate
numbers go to ``--json``.

Usage: python benchmarks/iov.py [--replicates 10] [--patients 100] [--omega-iov 0.15] [--method foce] [--json PATH]
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
from replicates import fit_replicates  # benchmarks/replicates.py: the loop omega_block.py shares

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "pk_1cmt_iv.toml"
DOSES_H = (0.0, 48.0, 96.0)
AFTER_H = (0.5, 2.0, 6.0, 12.0, 24.0)
DOSE_MG = 100.0
CL, V = 2.0, 20.0  # L/h, L: the model file's values
OMEGA = (0.3, 0.2)
SIGMA_PROP = 0.1

FIT = """\
# written by benchmarks/iov.py
model = "{model}"
data = "data.csv"
time_unit = "h"
occasion = "OCC"

[parameters.CL]
cv_percent = 30
iov_cv_percent = 10
[parameters.V]
cv_percent = 20

[error.conc]
kind = "proportional"
sigma_prop = 0.1
"""


def simulate(n: int, omega_iov: float, seed: int) -> str:
    """A NONMEM dataset (CSV text, TIME in hours, an OCC column) of ``n`` patients."""
    rng = np.random.default_rng(seed)
    lines = ["ID,TIME,AMT,DV,MDV,OCC"]
    for i in range(n):
        eta_cl, eta_v = OMEGA[0] * rng.standard_normal(), OMEGA[1] * rng.standard_normal()
        v = V * np.exp(eta_v)
        amount = 0.0  # mg in the body just before the occasion's dose
        for k, start in enumerate(DOSES_H):
            cl = CL * np.exp(eta_cl + omega_iov * rng.standard_normal())
            amount += DOSE_MG
            lines.append(f"{i + 1},{start:g},{DOSE_MG:g},0,1,{k + 1}")
            for t in AFTER_H:
                c = amount * np.exp(-cl / v * t) / v
                lines.append(f"{i + 1},{start + t:g},0,{c * (1.0 + SIGMA_PROP * rng.standard_normal()):.8g},0,{k + 1}")
            end = DOSES_H[k + 1] if k + 1 < len(DOSES_H) else start
            amount *= np.exp(-cl / v * (end - start))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=10)
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--omega-iov", type=float, default=0.15)
    parser.add_argument("--seed0", type=int, default=3000)
    parser.add_argument("--method", choices=("foce", "saem"), default="foce")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.replicates < 1 or args.patients < 2 or not args.omega_iov > 0:
        parser.error("need --replicates >= 1, --patients >= 2 and --omega-iov > 0")

    def row(est):
        iov = est.loc["omega_iov_CL"]
        return {"omega_iov_CL": float(iov["estimate"]), "se": float(iov["se"]), "ci_low": float(iov["ci_low"]), "ci_high": float(iov["ci_high"]),
                "omega_CL": float(est.loc["omega_CL", "estimate"]), "omega_V": float(est.loc["omega_V", "estimate"]), "sigma": float(est.loc["sigma_prop_conc", "estimate"])}  # fmt: skip

    describe = lambda r: (f"omega_iov_CL {r['omega_iov_CL']:.4f} (95% CI {r['ci_low']:.4f} to {r['ci_high']:.4f}), "
                          f"omega_CL {r['omega_CL']:.3f}, omega_V {r['omega_V']:.3f}, sigma {r['sigma']:.4f}")  # fmt: skip
    rows = fit_replicates(args.replicates, args.seed0, args.method, lambda seed: simulate(args.patients, args.omega_iov, seed), FIT.format(model=MODEL.as_posix()), row, describe)

    iov = np.array([r["omega_iov_CL"] for r in rows])
    relative = np.abs(iov / args.omega_iov - 1)
    covered = np.mean([r["ci_low"] <= args.omega_iov <= r["ci_high"] for r in rows])
    print()
    print(f"il2treg IOV recovery ({datetime.datetime.now().isoformat(timespec='seconds')}, {platform.machine()}, jax {jax.__version__}), "
          f"method {args.method}: {len(rows)} cohorts of {args.patients} patients, 3 occasions each, true omega_iov_CL {args.omega_iov:g}")  # fmt: skip
    print(f"estimated omega_iov_CL: mean {iov.mean():.4f} ({100 * (iov.mean() / args.omega_iov - 1):+.1f}%), SD {iov.std(ddof=1) if len(iov) > 1 else float('nan'):.4f}, "
          f"largest relative error {relative.max():.3f}; every replicate within 15%: {bool(np.all(relative <= 0.15))}; 95% CI coverage {covered:.2f}")  # fmt: skip
    print(f"omega_CL mean {np.mean([r['omega_CL'] for r in rows]):.3f} (truth {OMEGA[0]}), omega_V mean {np.mean([r['omega_V'] for r in rows]):.3f} (truth {OMEGA[1]}), "
          f"sigma mean {np.mean([r['sigma'] for r in rows]):.4f} (truth {SIGMA_PROP}); {sum(r['converged'] for r in rows)}/{len(rows)} converged; "
          f"median fit {np.median([r['wall_s'] for r in rows]):.1f} s")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "replicates": rows}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
