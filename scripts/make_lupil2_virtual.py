"""Regenerate the shipped simulated cohort, byte for byte.

Writes ``lupil2_virtual.csv`` (the long data table, see il2treg.data) and
``lupil2_virtual_truth.json`` (the parameters that generated it) with
``il2treg.datasets.simulate_cohort(LUPIL2_VIRTUAL_N, LUPIL2_VIRTUAL_SEED)`` on the LUPIL-2 design
and ``write_cohort``. The data are SIMULATED, not LUPIL-2 patient data.

The files depend on models/il2_treg_sledai.toml, models/lupil2_trial.toml and the package version:
after a recalibration (scripts/calibrate_trial.py --write, scripts/calibrate_pd.py) or a version
change, run this script again; tests/test_cohort.py fails until the shipped files match.

Usage: python scripts/make_lupil2_virtual.py [--out DIR]   (default: src/il2treg/datasets/data)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from il2treg.datasets.cohort import LUPIL2_VIRTUAL_N, LUPIL2_VIRTUAL_SEED, simulate_cohort, write_cohort

DATA_DIR = Path(__file__).resolve().parents[1] / "src" / "il2treg" / "datasets" / "data"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="folder to write the two files to")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    table, truth = simulate_cohort(LUPIL2_VIRTUAL_N, LUPIL2_VIRTUAL_SEED, return_truth=True)
    for path in write_cohort(table, args.out / "lupil2_virtual.csv", truth):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
