"""il2treg's FOCE-I fit of NONMEM's phenobarbital example beside NONMEM 7's results (pheno.ext).

    .venv/bin/python fits/pheno/compare.py                  # fit (about 30 s) and print the table
    .venv/bin/python fits/pheno/compare.py --results DIR    # the table of a results folder

Prints a markdown table: every estimate on NONMEM's scale (omega^2, sigma^2) and its SE beside
NONMEM's, and the OFV without the constant n log(2 pi) (il2treg.nonmem).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", help="a results folder of `il2treg fit fits/pheno/fit.toml` (default: fit now)")
    args = ap.parse_args()
    from il2treg.fit import load_fit, run_fit
    from il2treg.nonmem import compare_file

    if args.results:
        result = load_fit(args.results)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run_fit(HERE / "fit.toml", Path(tmp) / "results", figures=False)
    table = compare_file(result, HERE / "nonmem.toml")
    print("| parameter | NONMEM 7 | il2treg | difference | NONMEM SE | il2treg SE | SE difference |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in table.itertuples():
        if row.parameter == "OFV":
            print(f"| OFV (without n log 2 pi) | {row.nonmem:.6f} | {row.il2treg:.6f} | {row.relative_difference:+.6f} | | | |")
        else:
            print(f"| {row.parameter} | {row.nonmem:.6g} | {row.il2treg:.6g} | {100 * row.relative_difference:+.3f}% | "
                  f"{row.nonmem_se:.6g} | {row.il2treg_se:.6g} | {100 * row.se_relative_difference:+.3f}% |")  # fmt: skip


if __name__ == "__main__":
    main()
