"""Simulation-based calibration (Talts et al. 2018) of il2treg's NUTS on small simulated cohorts.

For each replicate r: draw the population parameters psi from the prior, the random effects from
N(0, omega^2), observations from the error model on the design of the first patients of
fits/lupil2_nuts (dose and sampling times kept, values replaced), sample the posterior with
il2treg's NUTS (il2treg.fit.bayes, the same chain function as `il2treg fit --method nuts`), and
record the rank of the true value of each population parameter among the thinned draws. If the
sampler and the model agree, each rank is uniform on 0..L.

Uniformity is tested per parameter with a chi-square test on 10 equal bins (and a KS test on the
normalised ranks); the p-values are printed with a Bonferroni threshold over the parameters.

The prior is il2treg.fit.priors.sampling_priors with omega_sd = sigma_sd = 0.3 (narrower than the
fit default of 1, so that prior draws stay in the range where the ODE is well behaved); SBC checks
the computation for whatever prior is used. Chains start at the prior mean with the prior variances
as the initial inverse mass matrix (no Laplace warm start: nothing from the truth leaks in); the
random effects on baseline counts are sampled centred, the one on emax_treg non-centred.

Usage: python benchmarks/sbc.py [--replicates 50] [--patients 4] [--warmup 100] [--samples 150]
       [--thin 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from il2treg.fit.assemble import initial_psi
from il2treg.fit.bayes import NutsSettings, Target, _chain
from il2treg.fit.priors import PriorDefaults, sampling_priors
from il2treg.fit.problem import patient_arrays, unpack
from il2treg.fit.spec import read_fit_spec

SPEC = Path(__file__).resolve().parents[1] / "fits" / "lupil2_nuts" / "fit.toml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=50)
    ap.add_argument("--patients", type=int, default=4, help="first patients of each arm: half IL-2, half placebo")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--samples", type=int, default=150)
    ap.add_argument("--thin", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    for name in ("replicates", "patients", "warmup", "samples", "thin"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    jax.config.update("jax_enable_x64", True)
    spec = read_fit_spec(SPEC)
    problem = spec.problem()
    res0 = spec.residual_model()
    all_patients = patient_arrays(spec.dataset)
    half = args.patients // 2
    dosed = np.asarray(all_patients.dose_amount).sum(axis=1) > 0
    rows = np.r_[np.flatnonzero(dosed)[:half], np.flatnonzero(~dosed)[: args.patients - half]]
    patients = jax.tree_util.tree_map(lambda x: x[rows], all_patients)
    n, ne = len(rows), problem.n_eta
    prior = sampling_priors(problem, initial_psi(spec, problem, res0), PriorDefaults(omega_sd=0.3, sigma_sd=0.3))
    # baseline counts are measured directly (centred), the expansion only in dosed patients (non-centred)
    centred = jnp.broadcast_to(jnp.asarray([name != "emax_treg" for name in problem.random]), (n, ne))
    template = Target(problem, patients, res0, prior, jnp.ones(n, dtype=bool), centred)
    settings = NutsSettings(chains=1, warmup=args.warmup, samples=args.samples, max_tree_depth=7)
    start = {"psi": prior.mean, "z": template.to_coordinates(prior.mean, jnp.zeros((n, ne)))}
    imm0 = jnp.concatenate([prior.sd**2, jnp.where(centred, 0.1, 1.0).ravel()])

    t = time.perf_counter()
    simulate = eqx.filter_jit(lambda tgt, psi, z, key: tgt.pointwise(psi, z, key))
    run = eqx.filter_jit(lambda tgt, key: _chain(tgt, start, imm0, key, settings))
    compiled = run.lower(template, jax.random.PRNGKey(0)).compile()
    compile_s = time.perf_counter() - t

    def replicate(r: int):
        key = jax.random.PRNGKey(args.seed * 100_003 + r)
        k_psi, k_z, k_y, k_run = jax.random.split(key, 4)
        psi = prior.mean + prior.sd * jax.random.normal(k_psi, prior.mean.shape)
        eta = unpack(problem, problem.split(psi), res0).omega * jax.random.normal(k_z, (n, ne))  # eta ~ N(0, omega^2) of this draw
        z = template.to_coordinates(psi, eta)  # the sampler's coordinates: log theta_i where centred, eta/omega elsewhere
        _, y, status = simulate(template, psi, z, k_y)
        if bool(jnp.any(status != 0)):
            return r, None, "simulation failed"
        data = eqx.tree_at(lambda tg: tg.patients.obs_value, template, jnp.where(patients.obs_mask, y, patients.obs_value))
        out = jax.block_until_ready(compiled(data, k_run))
        draws = np.asarray(out[0])[:: args.thin]  # psi draws [samples/thin, psi]
        ranks = np.sum(draws < np.asarray(psi)[None, :], axis=0)
        print(f"replicate {r}: {time.perf_counter() - t:.0f} s since start, mean leapfrog steps {float(np.mean(out[6])):.1f}", flush=True)
        return r, {"ranks": ranks.tolist(), "divergences": int(np.sum(out[4])), "mean_steps": float(np.mean(out[6]))}, "ok"

    t = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        results = list(pool.map(replicate, range(args.replicates)))
    wall = time.perf_counter() - t
    done = [res for _, res, msg in results if res is not None]
    failed = [r for r, res, msg in results if res is None]
    ranks = np.asarray([d["ranks"] for d in done])
    L = args.samples // args.thin + (1 if args.samples % args.thin else 0)
    names = list(problem.psi_names)
    report = {"date": datetime.date.today().isoformat(), "replicates": args.replicates, "used": len(done), "simulation_failed": failed,
              "patients": n, "warmup": args.warmup, "samples": args.samples, "thin": args.thin, "draws_per_rank": L,
              "compile_s": compile_s, "wall_s": wall, "divergences": int(sum(d["divergences"] for d in done)),
              "mean_steps": float(np.mean([d["mean_steps"] for d in done])), "parameters": {}}  # fmt: skip
    bonferroni = 0.05 / len(names)
    print(f"SBC: {len(done)} of {args.replicates} replicates ({len(failed)} prior draws not simulable), {n} patients, "
          f"{L} draws per rank; compile {compile_s:.1f} s, sampling {wall:.1f} s; {report['divergences']} divergences")  # fmt: skip
    for k, name in enumerate(names):
        counts, _ = np.histogram(ranks[:, k], bins=10, range=(0, L + 1))
        chi2 = stats.chisquare(counts)
        ks = stats.kstest((ranks[:, k] + 0.5) / (L + 1), "uniform")
        report["parameters"][name] = {"bins": counts.tolist(), "chi2_p": float(chi2.pvalue), "ks_p": float(ks.pvalue)}
        flag = "" if min(chi2.pvalue, ks.pvalue) > bonferroni else "  <- below the Bonferroni threshold"
        print(f"  {name:26s} chi2 p = {chi2.pvalue:.3f}  KS p = {ks.pvalue:.3f}  bins {counts.tolist()}{flag}")
    print(f"Bonferroni threshold over {len(names)} parameters: p < {bonferroni:.4f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
