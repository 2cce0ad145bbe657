"""Compare IL-2 regimens over a virtual population, with parameter uncertainty.

    .venv/bin/python scripts/compare_regimens.py --out out/regimens        # the whole library
    .venv/bin/python scripts/compare_regimens.py --regimens lupil2,he2020 --fit fits/lupil2_virtual/results

Copy and edit: add your own regimen with the builders of il2treg.regimen (every, daily, weekly,
cycles) or read NONMEM dose rows with il2treg.regimen.read_regimen_csv.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import il2treg
from il2treg import plots, regimen

ap = argparse.ArgumentParser()
ap.add_argument("--regimens", default=",".join(regimen.NAMED_REGIMENS), help="comma-separated names")
ap.add_argument("--n", type=int, default=1000, help="virtual patients")
ap.add_argument("--fit", type=Path, default=None, help="a fit's results folder: draw the population from its posterior")
ap.add_argument("--draws", type=int, default=None, help="population draws shared by n/draws patients: the mean effect against placebo with its interval")
ap.add_argument("--out", type=Path, default=Path("out/regimens"))
args = ap.parse_args()

# The regimens: names from the library, plus one of our own (1.5 MIU twice weekly for 12 weeks).
regimens = {name: regimen.named(name) for name in args.regimens.split(",")}
regimens["twice_weekly"] = regimen.cycles(regimen.Regimen([0.0, 3.0], [1.5e6, 1.5e6]), 7.0, 12)

# One virtual population for all regimens: each patient has its own draw of the population
# parameters (from the fit's posterior, or from the priors in models/), then its random effects.
fit = il2treg.load_fit(args.fit) if args.fit else None
comparison = il2treg.compare(regimens, n=args.n, fit=fit, draws=args.draws)

args.out.mkdir(parents=True, exist_ok=True)
comparison.table.to_csv(args.out / "table.csv", index=False)  # regimen, metric, unit, median, p5, p95
plots.plot_regimen_comparison(comparison).savefig(args.out / "comparison.png", dpi=120)
print(comparison.wide().T.to_string())
if args.draws and "placebo" in regimens:
    # the mean over each draw's patients, paired with placebo in the same patients: median [90% interval] over the draws
    difference = comparison.difference("placebo")
    difference.to_csv(args.out / "difference.csv", index=False)
    print(difference[difference["metric"].isin(["treg_mean_fold", "p_sri4_w12"])].round(3).to_string(index=False))
print(f"{comparison.run_s:.1f} s; wrote {args.out}/table.csv and comparison.png")
