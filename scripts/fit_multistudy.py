"""Multi-study calibration: fit each IL-2 mechanism's cell parameters to the published study summaries,
compare the mechanisms, and check each fit by leaving one study out.

Data: ``il2treg.datasets.summaries.study_summaries()`` (DILT1D, DILfrequency, Koreth 2011 and
2016, ULD IL-2 after alloSCT 2014: eight numbers, three of them lower bounds; the file states
every encoding choice). Estimated per mechanism (:data:`ESTIMATED`, those it declares): the Treg
Emax, EC50 and turnover, the transit time and the CD25 Emax, with the model files' priors (a
posterior mode); everything else, the NK Emax and the omegas included (held at the model file's
CVs), stays at the model's values. Virtual patients: ``--n-draws`` per
arm, common random numbers.

Writes to ``--out`` (default fits/multistudy/), each file atomically:
  * ``fits.json``: per mechanism the estimates, their relative SEs, OFV, AIC, the statistics;
  * ``comparison.md``: OFV and AIC side by side, and each summary observed against each fit;
  * ``loso.csv`` and ``loso.md``: each study predicted by the fit without it (estimates and 95%
    interval from ``--samples`` draws of the estimates, widened by the observation's SE, centred
    on the prediction of ``--predict-draws`` virtual patients per arm: :func:`band`), and
    whether the observation falls inside (a bound: whether the interval reaches past it);
  * ``observed_vs_predicted.png``: each summary against the full fit's and the left-out fit's band.

Usage: python scripts/fit_multistudy.py [--mechanisms A,B] [--n-draws 64] [--samples 200] [--predict-draws 4096] [--loso-best 2] [--no-loso]

Leave-one-study-out refits start from the full fit's estimates and are run for the ``--loso-best``
mechanisms of lowest AIC (each refit compiles and solves the daily-dosing arms anew: minutes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

import il2treg
from il2treg._io import atomic_write_text
from il2treg.datasets.summaries import StudySummaries, study_summaries
from il2treg.errors import SpecError
from il2treg.fit.aggregate import SummaryFit, fit_summaries, predict_summaries

ROOT = Path(__file__).resolve().parents[1]
MECHANISMS = ("il2_treg_sledai", "il2_treg_sledai_receptor", "il2_treg_sledai_no_delay", "il2_treg_sledai_no_sink", "il2_treg_sledai_no_cd25_feedback")
#: Each with a prior in the model files: the fit is a posterior mode, the literature's ranges and
#: the studies combined (with eight numbers, three of them bounds, Emax and EC50 are otherwise
#: told apart only through their ratio: a maximum-likelihood fit ran them to 2.7e7 and 6.4e7).
#: The NK Emax is not estimated: its one number is a bound, and it has no prior.
ESTIMATED = ("emax_treg", "ec50_treg", "kout_treg", "mtt", "emax_cd25")
#: A parameter estimated only where a summary of this observable is among the data (a study left
#: out may take the only one with it; the parameter then stays at the model file's value).
NEEDS = {"emax_cd25": "cd25_treg_rel"}


def held_omegas(model) -> dict[str, float]:
    """The model file's between-patient SDs (of log p), held fixed in the fit."""
    return {p: model.spec[p].omega for p in model.parameter_names if model.spec[p].omega > 0}


def fit_one(model, data: StudySummaries, n_draws: int, start: SummaryFit | None = None) -> SummaryFit:
    seen = {s.observable for s in data.summaries}
    fixed = tuple(p for p in ESTIMATED if p in model.parameter_names and NEEDS.get(p, next(iter(seen))) in seen)
    begin = {p: v for p, v in zip(start.names, start.estimates.tolist(), strict=True) if p in fixed} if start is not None else None
    return fit_summaries(model, data.regimens, data.summaries, fixed=fixed, omega=held_omegas(model), n_draws=n_draws, seed=0, start=begin, priors=True)


def band(model, fit: SummaryFit, data: StudySummaries, n_draws: int, samples: int, predict_draws: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(prediction at the estimates, 2.5% and 97.5% limits for an observation, the prediction
    from the fit's own ``n_draws`` virtual patients): draws of the estimates plus the
    observation's normal error of SD se.

    The prediction at the estimates is that of ``predict_draws`` virtual patients per arm (other
    draws than the fit's: seed 1), so that its Monte Carlo error is small; the draws of the
    estimates are evaluated with ``n_draws`` patients each (common random numbers, seed 0) and
    moved by the same control-variate correction, the ratio of the two predictions at the
    estimates (their difference for a change, which may be <= 0): the band keeps the spread due
    to the estimates' uncertainty, centred where many virtual patients put it."""
    at_large, _ = predict_summaries(fit, model, data.regimens, data.summaries, n_draws=predict_draws, seed=1)
    try:
        at, drawn = predict_summaries(fit, model, data.regimens, data.summaries, n_draws=n_draws, seed=0, samples=samples)
    except SpecError as err:  # no usable covariance: the prediction without its interval
        print(f"    no interval: {err}")
        at, _ = predict_summaries(fit, model, data.regimens, data.summaries, n_draws=n_draws, seed=0)
        return at_large, np.full(at.shape, np.nan), np.full(at.shape, np.nan), at
    ratio = np.asarray([s.scale != "change" for s in data.summaries]) & (at > 0) & (at_large > 0)
    drawn = np.where(ratio, drawn * (at_large / np.where(ratio, at, 1.0)), drawn + (at_large - at))
    se = np.asarray([s.se for s in data.summaries])
    observed = drawn + np.random.default_rng(2).normal(size=drawn.shape) * se
    ok = np.all(np.isfinite(observed), axis=1)
    if not ok.any():
        return at_large, np.full(at.shape, np.nan), np.full(at.shape, np.nan), at
    lo, hi = np.percentile(observed[ok], [2.5, 97.5], axis=0)
    return at_large, lo, hi, at


def inside(summary, lo: float, hi: float) -> bool | None:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    if summary.bound == "lower":
        return hi >= summary.value
    if summary.bound == "upper":
        return lo <= summary.value
    return lo <= summary.value <= hi


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mechanisms", default=",".join(MECHANISMS))
    parser.add_argument("--n-draws", type=int, default=64)
    parser.add_argument("--loso-best", type=int, default=2)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--predict-draws", type=int, default=4096)
    parser.add_argument("--no-loso", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "fits" / "multistudy")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = study_summaries()
    mechanisms = tuple(args.mechanisms.split(","))
    results, fits, models = {}, {}, {}
    for name in mechanisms:
        model = models[name] = il2treg.load_model(name)
        t0 = time.perf_counter()
        fit = fits[name] = fit_one(model, data, args.n_draws)
        k = len(fit.names)
        results[name] = {
            "names": list(fit.names), "estimates": fit.estimates.tolist(), "se_log": fit.se_log.tolist(),
            "model_values": [float(model.typical()[p]) for p in fit.fixed], "ofv": fit.ofv, "prior": fit.prior,
            "ofv_data": fit.ofv - fit.prior, "n_estimated": k, "aic": fit.ofv - fit.prior + 2 * k, "converged": fit.converged,
            "message": fit.message, "predicted": fit.predicted.tolist(), "seconds": time.perf_counter() - t0,
        }  # fmt: skip
        r = results[name]
        print(f"{name}: objective {fit.ofv:.3f} (data {r['ofv_data']:.3f}, prior {fit.prior:.3f})  AIC {r['aic']:.3f}  "
              f"converged {fit.converged} ({fit.message})  ({r['seconds']:.0f} s)", flush=True)  # fmt: skip
        for p, v, s in zip(fit.names, fit.estimates, fit.se_log, strict=True):
            print(f"    {p:12s} {v:10.4g}  (RSE {100 * s:.0f}%)")
    meta = {"n_draws": args.n_draws, "samples": args.samples, "bsa_m2": data.bsa_m2, "studies": list(data.study_names),
            "summaries": [{"study": st, "row": r, "arm": s.arm, "observable": s.observable, "time": s.time, "statistic": s.statistic,
                           "scale": s.scale, "bound": s.bound, "value": s.value, "se": s.se} for s, st, r in zip(data.summaries, data.studies, data.rows, strict=True)]}  # fmt: skip
    atomic_write_text(args.out / "fits.json", json.dumps({"meta": meta, "fits": results}, indent=1) + "\n")
    best = min(results, key=lambda m: results[m]["aic"])
    lines = ["# Multi-study calibration: the mechanisms compared", "",
             f"Written by `scripts/fit_multistudy.py` ({args.n_draws} virtual patients per arm); data: `il2treg.datasets.summaries` "
             f"({len(data.summaries)} summaries from {len(data.study_names)} studies). Each fit is a posterior mode: the data's -2 log-likelihood "
             "(OFV) plus the model file's priors on the estimated parameters. AIC is the data's OFV + 2 x estimated; lower is better; "
             "ΔAIC against the best.", "",
             "| mechanism | data OFV | prior term | estimated | AIC | ΔAIC | converged (BFGS) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in sorted(results, key=lambda m: results[m]["aic"]):
        r = results[name]
        lines.append(f"| {name} | {r['ofv_data']:.2f} | {r['prior']:.2f} | {r['n_estimated']} | {r['aic']:.2f} | {r['aic'] - results[best]['aic']:.2f} | {r['converged']} ({r['message']}) |")
    lines += ["", "## Each summary against each fit", "",
              "| study | observable | day | statistic | observed | " + " | ".join(mechanisms) + " |",
              "|---|---|---|---|---|" + "---|" * len(mechanisms)]  # fmt: skip
    for j, (s, st) in enumerate(zip(data.summaries, data.studies, strict=True)):
        shown = ("> " if s.bound == "lower" else "< " if s.bound == "upper" else "") + f"{s.value:g} ± {s.se:g}"
        lines.append(f"| {st} | {s.observable} ({s.scale}) | {s.time:g} | {s.statistic} | {shown} | " + " | ".join(_fmt(results[m]["predicted"][j]) for m in mechanisms) + " |")
    lines += ["", "## Estimates (relative SE)", ""]
    for name in mechanisms:
        r = results[name]
        cells = ", ".join(f"{p} {v:.4g} (model file {m:.4g}; RSE {100 * s:.0f}%)" for p, v, m, s in zip(r["names"], r["estimates"], r["model_values"], r["se_log"], strict=True))
        lines.append(f"- **{name}**: {cells}")
    atomic_write_text(args.out / "comparison.md", "\n".join(lines) + "\n")
    if args.no_loso:
        return
    loso_rows, full_bands = [], {}
    mechanisms = tuple(sorted(mechanisms, key=lambda m: results[m]["aic"])[: args.loso_best])
    for name in mechanisms:
        model = models[name]
        full_bands[name] = band(model, fits[name], data, args.n_draws, args.samples, args.predict_draws)[:3]
        for study in data.study_names:
            t0 = time.perf_counter()
            kept, left = data.without(study), data.only(study)
            fit = fit_one(model, kept, args.n_draws, start=fits[name])
            at, lo, hi, at_fit_draws = band(model, fit, left, args.n_draws, args.samples, args.predict_draws)
            for j, s in enumerate(left.summaries):
                loso_rows.append({"mechanism": name, "study": study, "observable": s.observable, "scale": s.scale, "time": s.time, "statistic": s.statistic,
                                  "bound": s.bound or "", "observed": s.value, "se": s.se, "predicted": float(at[j]), "lo95": float(lo[j]), "hi95": float(hi[j]),
                                  f"predicted_{args.n_draws}_patients": float(at_fit_draws[j]),
                                  "inside": inside(s, lo[j], hi[j]), "full_fit_predicted": results[name]["predicted"][data.summaries.index(s)],
                                  "converged": fit.converged})  # fmt: skip
            print(f"  LOSO {name} without {study}: OFV {fit.ofv:.3f} converged {fit.converged} ({time.perf_counter() - t0:.0f} s)", flush=True)
    atomic_write_text(args.out / "loso.csv", pd.DataFrame(loso_rows).to_csv(index=False, float_format="%.6g"))
    md = ["# Leave one study out", "",
          f"The {len(mechanisms)} mechanisms of lowest AIC in comparison.md, {args.n_draws} virtual patients per arm.", "",
          "Each study predicted by the fit to the others (`scripts/fit_multistudy.py`): the prediction at the estimates and the 95% interval of "
          f"an observation ({args.samples} draws of the estimates from their covariance, plus the observation's normal error). "
          f"The prediction is that of {args.predict_draws} virtual patients per arm; each draw's, of {args.n_draws}, moved by the ratio of the two at the "
          f"estimates (a control variate: loso.csv's `predicted_{args.n_draws}_patients` is the uncorrected one). "
          "For a bound, 'inside' means the interval reaches past it.", "",
          "| mechanism | study | observable | day | observed | predicted | 95% interval | inside |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in loso_rows:
        shown = (">" if r["bound"] == "lower" else "<" if r["bound"] == "upper" else "") + f"{r['observed']:g}"
        md.append(f"| {r['mechanism']} | {r['study']} | {r['observable']} ({r['scale']}, {r['statistic']}) | {r['time']:g} | {shown} | {_fmt(r['predicted'])} | "
                  f"{_fmt(r['lo95'])}-{_fmt(r['hi95'])} | {'n/a' if r['inside'] is None else 'yes' if r['inside'] else '**no**'} |")  # fmt: skip
    for name in mechanisms:
        rows = [r for r in loso_rows if r["mechanism"] == name]
        with_interval = [r for r in rows if r["inside"] is not None]
        md.append(f"\n{name}: {sum(r['inside'] for r in with_interval)} of the {len(with_interval)} predictions with an interval inside it; "
                  f"{len(rows) - len(with_interval)} without one (the refit's covariance was not positive definite).")  # fmt: skip
    atomic_write_text(args.out / "loso.md", "\n".join(md) + "\n")
    plot(args.out / "observed_vs_predicted.png", data, mechanisms, full_bands, loso_rows)


def plot(path: Path, data: StudySummaries, mechanisms, full_bands, loso_rows) -> None:
    """Each summary: observed ± 1.96 SE (a bound as an arrow), each mechanism's full-fit band and
    its left-out prediction band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(data.summaries)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 3.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, (ax, s, st) in enumerate(zip(np.atleast_1d(axes), data.summaries, data.studies, strict=True)):
        if s.bound:
            ax.annotate("", xy=(0, s.value + (2 if s.bound == "lower" else -2) * s.se), xytext=(0, s.value), arrowprops={"arrowstyle": "->"})
            ax.plot([0], [s.value], "k_", markersize=14)
            tip = s.value + (2 if s.bound == "lower" else -2) * s.se
            ax.plot([0], [tip], alpha=0)  # annotate does not widen the axis: the arrow's tip would be cut off
        else:
            ax.errorbar([0], [s.value], yerr=[1.96 * s.se], fmt="ko", capsize=3)
        for m, name in enumerate(mechanisms):
            at, lo, hi = full_bands[name]
            x = 1 + m
            ax.plot([x - 0.15, x - 0.15], [lo[j], hi[j]], color=colours[m % len(colours)], lw=4, alpha=0.5)
            ax.plot([x - 0.15], [at[j]], "o", color=colours[m % len(colours)], ms=4)
            row = next(r for r in loso_rows if r["mechanism"] == name and r["study"] == st and r["observable"] == s.observable and r["time"] == s.time)
            ax.plot([x + 0.15, x + 0.15], [row["lo95"], row["hi95"]], color=colours[m % len(colours)], lw=1.5, ls=":")
            ax.plot([x + 0.15], [row["predicted"]], "s", mfc="none", color=colours[m % len(colours)], ms=4)
        ax.set_xticks([0, *range(1, len(mechanisms) + 1)], ["obs", *(str(m + 1) for m in range(len(mechanisms)))], fontsize=7)
        ax.set_title(f"{st}\n{s.observable} {s.scale}\nday {s.time:g}", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    legend = "; ".join(f"{m + 1} = {name}" for m, name in enumerate(mechanisms))
    fig.suptitle("Observed (black, ±1.96 SE; arrow: a bound) against each mechanism: full fit (solid band) and fit without the study (dotted)\n" + legend, fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)


if __name__ == "__main__":
    main()

