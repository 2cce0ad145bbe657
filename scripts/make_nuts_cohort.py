"""Write fits/lupil2_nuts/cohort.csv: a small SIMULATED cohort for the NUTS example and benchmark.

The first 4 IDs of each arm of il2treg.datasets.lupil2_virtual() (simulated, not patient data),
observations up to day 28 and the doses before it (the induction and three weekly doses): small
enough for NUTS to sample in minutes on a 2-core machine (benchmarks/bayes.py).
Run: python scripts/make_nuts_cohort.py
"""

from pathlib import Path

from il2treg.datasets import lupil2_virtual

PER_ARM, LAST_DAY = 4, 28.0
OUT = Path(__file__).resolve().parents[1] / "fits" / "lupil2_nuts" / "cohort.csv"


def main() -> None:
    table = lupil2_virtual()
    arm = table.groupby("ID")["ARM"].first()
    ids = [i for a in sorted(arm.unique()) for i in sorted(arm[arm == a].index)[:PER_ARM]]
    keep = table["ID"].isin(ids) & (((table["EVID"] == 0) & (table["TIME"] <= LAST_DAY)) | ((table["EVID"] == 1) & (table["TIME"] < LAST_DAY)))
    table[keep].to_csv(OUT, index=False)
    print(f"wrote {OUT} ({len(ids)} patients, {int(keep.sum())} rows)")


if __name__ == "__main__":
    main()
