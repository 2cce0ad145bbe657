"""Design a regimen: maximise the time-averaged Treg fold change over weeks 0-12 with LUPIL-2's
injection days, no more IL-2 in total than LUPIL-2, and limits on NK expansion and the IL-2 peak.

    .venv/bin/python scripts/optimise_regimen.py [--optimise-times]

Copy and edit the constraints (il2treg.Constraints) and the objective (il2treg.design.OBJECTIVES).
"""

import argparse

import numpy as np

import il2treg

ap = argparse.ArgumentParser()
ap.add_argument("--optimise-times", action="store_true", help="also move the injections")
args = ap.parse_args()

constraints = il2treg.Constraints(
    nk_change_max_pct=30.0,    # CD56bright NK cells up by at most 30% ...
    cmax_max_pM=25.0,          # ... serum IL-2 below 25 pM ...
    quantile=0.5,              # ... for the median patient
    total_dose_max_iu=24e6,    # no more IL-2 than LUPIL-2's 16 x 1.5 MIU
    dose_max_iu=3e6,           # no injection above 3 MIU
)
design = il2treg.optimise("lupil2", objective="treg_mean_fold", constraints=constraints,
                          optimise_times=args.optimise_times, n_starts=5, steps=150)

print(design.checks.to_string(index=False))  # every limit checked by a fresh simulation
print(f"time-averaged Treg fold change: LUPIL-2 {design.start_value:.4f} -> designed {design.value:.4f}")
print(f"5 starts agree within {100 * design.spread:.3f}%")
for t, a in zip(np.asarray(design.regimen.times), np.asarray(design.regimen.amounts)):
    print(f"  day {t:6.2f}: {a / 1e6:.3f} MIU")
print(il2treg.regimen.to_nonmem(design.regimen).to_string(index=False))  # NONMEM dose rows
