"""NUTS on a small simulated cohort: il2treg's sampler against the obvious numpyro model, in one run.

Cohort and model: fits/lupil2_nuts (8 SIMULATED patients, 4 IL-2 and 4 placebo, to day 28; fixed
effects emax_treg, kout_treg, treg0, tconv0; log-normal random effects on emax_treg, treg0,
tconv0; proportional errors on Treg and Tconv counts). Same priors in every run
(il2treg.fit.priors.sampling_priors).

1. **il2treg** (`il2treg fit --method nuts`): Laplace fit, then blackjax NUTS warm-started from it,
   per-effect centred / non-centred coordinates, forward sensitivities in the ODE directions only,
   chains in parallel threads.
2. **obvious** (`--baseline`): numpyro's NUTS with default settings (init_to_uniform, diagonal mass
   matrix adapted from the identity, max_tree_depth 10, chains one after another) on a numpyro
   model written the plain way: centred random effects, predictions by a diffrax solve
   differentiated in reverse mode (RecursiveCheckpointAdjoint), numpyro.sample(obs=...).
3. **numpyro on il2treg's density** (`--numpyro-same`): numpyro's NUTS on exactly il2treg's log
   density, started and scaled as il2treg starts blackjax: the sampler library compared alone.

Reports wall time (compilation separately where the library allows), divergences, the largest
R-hat, the smallest bulk ESS over the population parameters and ESS per second of sampling.

Usage: python benchmarks/bayes.py [--baseline] [--numpyro-same] [--baseline-chains C]
       [--baseline-warmup W] [--baseline-samples S] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import time
from pathlib import Path

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np

from il2treg.fit.assemble import initial_psi
from il2treg.fit.bayes import eta_variances, make_target
from il2treg.fit.estimators import Nuts
from il2treg.fit.population import Objective
from il2treg.fit.priors import sampling_priors
from il2treg.fit.problem import individual_theta, patient_arrays, predict, unpack
from il2treg.fit.run import compute_fit
from il2treg.fit.spec import read_fit_spec
from il2treg.simulate import SolverOptions

SPEC = Path(__file__).resolve().parents[1] / "fits" / "lupil2_nuts" / "fit.toml"


def summarise(draws: dict, names, seconds: float, diverging) -> dict:
    idata = az.from_dict(posterior=draws)
    s = az.summary(idata, var_names=list(names), round_to="none")
    ess = float(s["ess_bulk"].min())
    return {
        "seconds": seconds, "divergences": int(np.sum(diverging)), "max_rhat": float(s["r_hat"].max()),
        "min_ess_bulk": ess, "min_ess_tail": float(s["ess_tail"].min()), "ess_per_s": ess / seconds,
        "mean": {n: float(s.loc[n, "mean"]) for n in names}, "sd": {n: float(s.loc[n, "sd"]) for n in names},
        "ess_bulk": {n: float(s.loc[n, "ess_bulk"]) for n in names}, "r_hat": {n: float(s.loc[n, "r_hat"]) for n in names},
    }  # fmt: skip


def run_il2treg(spec) -> tuple[dict, object]:
    t = time.perf_counter()
    result = compute_fit(spec, estimator=Nuts())
    wall = time.perf_counter() - t
    post = result.inference.posterior
    names = list(result.psi_names)
    stats = result.inference.sample_stats
    out = summarise({n: post[n].values for n in names}, names, result.timing["nuts_sampling_s"], stats["diverging"].values)
    out.update(compile_s=result.timing["nuts_compile_s"], wall_total_s=wall, laplace_s=result.timing["estimation_s"] + result.timing.get("covariance_s", 0.0),
               mean_steps=float(stats["n_steps"].mean()), solver_failed=int(stats["solver_failed"].sum()))  # fmt: skip
    est = result.estimates.set_index("parameter")
    agree = {}
    for n in names:
        se = float(est.loc[n, "se"])
        agree[n] = {"laplace": float(est.loc[n, "estimate"]), "laplace_se": se, "rse_percent": float(est.loc[n, "rse_percent"]),
                    "posterior_mean": out["mean"][n], "difference_in_se": (out["mean"][n] - float(est.loc[n, "estimate"])) / se}  # fmt: skip
    out["vs_laplace"] = agree
    return out, result


def numpyro_obvious(spec, chains: int, warmup: int, samples: int, seed: int) -> dict:
    """numpyro NUTS, default settings, centred model, reverse mode through a plain diffrax solve."""
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS

    problem = spec.problem(SolverOptions())  # reverse mode (RecursiveCheckpointAdjoint) through the solve
    patients = patient_arrays(spec.dataset)
    res0 = spec.residual_model()
    prior = sampling_priors(problem, initial_psi(spec, problem, res0), spec.nuts.priors)
    n = patients.obs_time.shape[0]
    ne = problem.n_eta

    def model():
        psi = jnp.stack([numpyro.sample(name, dist.Normal(prior.mean[k], prior.sd[k])) for k, name in enumerate(problem.psi_names)])
        up = unpack(problem, problem.split(psi), res0)
        with numpyro.plate("patient", n):
            eta = numpyro.sample("eta", dist.Normal(jnp.zeros(ne), up.omega).to_event(1))
        theta = up.theta
        pred, status = jax.vmap(lambda e, p: predict(problem, individual_theta(problem, theta, e), p))(eta, patients)
        ok = jnp.all(status == 0) & jnp.all(jnp.isfinite(pred))  # a failed solve rejects the proposal
        pred = jnp.where(ok, pred, 1.0)
        numpyro.factor("solver_failed", jnp.where(ok, 0.0, -jnp.inf))
        sd = jnp.maximum(up.residual.sigma_prop[patients.obs_dvid] * jnp.abs(pred), 1e-12)
        numpyro.sample("y", dist.Normal(pred, sd).mask(patients.obs_mask), obs=patients.obs_value)

    mcmc = MCMC(NUTS(model), num_warmup=warmup, num_samples=samples, num_chains=chains, progress_bar=False)
    t = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), extra_fields=("diverging",))
    wall = time.perf_counter() - t
    draws = mcmc.get_samples(group_by_chain=True)
    names = list(problem.psi_names)
    out = summarise({k: np.asarray(draws[k]) for k in names}, names, wall, mcmc.get_extra_fields()["diverging"])
    out["note"] = "seconds include numpyro's compilation (MCMC.run compiles and samples in one call)"
    return out


def numpyro_same_density(spec, chains: int, warmup: int, samples: int, seed: int) -> dict:
    """numpyro NUTS on il2treg's log density, started as il2treg starts blackjax."""
    from numpyro.infer import MCMC, NUTS

    problem = spec.problem()
    patients = patient_arrays(spec.dataset)
    res0 = spec.residual_model()
    obj = Objective(problem, patients, res0)
    from il2treg.fit.estimate import estimate_covariance, fit_population

    fit = fit_population(obj, initial_psi(spec, problem, res0), covariance=False)
    inner = obj.inner(fit.psi, fit.eta)
    cov = estimate_covariance(obj, fit.psi, inner, fit.included)
    random_effects = unpack(problem, problem.split(fit.psi), res0).random_effects
    omega = random_effects.sd
    ev = eta_variances(inner, random_effects)
    target = make_target(problem, patients, res0, sampling_priors(problem, initial_psi(spec, problem, res0), spec.nuts.priors), fit.included, ev, omega)
    z0 = target.to_coordinates(fit.psi, fit.eta)
    zvar = jnp.where(target.centred, ev, ev / omega**2)
    imm = jnp.concatenate([jnp.diag(cov), zvar.ravel()])
    kernel = NUTS(potential_fn=lambda pos: -target.log_density(pos), inverse_mass_matrix=imm, max_tree_depth=spec.nuts.max_tree_depth)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=samples, num_chains=chains, progress_bar=False)
    init = {"psi": jnp.broadcast_to(fit.psi, (chains, len(fit.psi))), "z": jnp.broadcast_to(z0, (chains, *z0.shape))}
    t = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), init_params=init if chains > 1 else {"psi": fit.psi, "z": z0}, extra_fields=("diverging",))
    wall = time.perf_counter() - t
    psi = np.asarray(mcmc.get_samples(group_by_chain=True)["psi"])
    names = list(problem.psi_names)
    out = summarise({n: psi[..., k] for k, n in enumerate(names)}, names, wall, mcmc.get_extra_fields()["diverging"])
    out["note"] = "estimation-scale parameters; seconds include numpyro's compilation"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", action="store_true", help="also run the obvious numpyro model")
    ap.add_argument("--numpyro-same", action="store_true", help="also run numpyro on il2treg's density")
    ap.add_argument("--baseline-chains", type=int, default=4)
    ap.add_argument("--baseline-warmup", type=int, help="default: the fit file's [nuts] warmup")
    ap.add_argument("--baseline-samples", type=int, help="default: the fit file's [nuts] samples")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    for name in ("baseline_chains", "baseline_warmup", "baseline_samples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    jax.config.update("jax_enable_x64", True)
    spec = read_fit_spec(SPEC)
    nuts = spec.nuts
    report = {"date": datetime.date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "jax": jax.__version__, "settings": {k: v for k, v in dataclasses.asdict(nuts).items() if k != "priors"}}  # fmt: skip
    ours, _ = run_il2treg(spec)
    report["il2treg"] = ours
    print(f"il2treg (blackjax): {ours['seconds']:.1f} s sampling + {ours['compile_s']:.1f} s compile; {ours['divergences']} divergences; "
          f"max R-hat {ours['max_rhat']:.4f}; min bulk ESS {ours['min_ess_bulk']:.0f}; {ours['ess_per_s']:.2f} ESS/s; mean leapfrog steps {ours['mean_steps']:.1f}")  # fmt: skip
    for n, a in ours["vs_laplace"].items():
        print(f"  {n:26s} Laplace {a['laplace']:.4g} (SE {a['laplace_se']:.3g}, RSE {a['rse_percent']:.0f}%)  posterior mean {a['posterior_mean']:.4g}  diff {a['difference_in_se']:+.2f} SE")
    if args.numpyro_same:
        same = numpyro_same_density(spec, nuts.chains, nuts.warmup, nuts.samples, nuts.seed)
        report["numpyro_same_density"] = same
        print(f"numpyro, il2treg's density: {same['seconds']:.1f} s incl. compile; {same['divergences']} divergences; max R-hat {same['max_rhat']:.4f}; "
              f"min bulk ESS {same['min_ess_bulk']:.0f}; {same['ess_per_s']:.2f} ESS/s")  # fmt: skip
    if args.baseline:
        warmup, samples = args.baseline_warmup or nuts.warmup, args.baseline_samples or nuts.samples
        base = numpyro_obvious(spec, args.baseline_chains, warmup, samples, nuts.seed)
        base.update(chains=args.baseline_chains, warmup=warmup, samples=samples)
        report["numpyro_obvious"] = base
        print(f"numpyro obvious ({args.baseline_chains} chains x {warmup} + {samples}): {base['seconds']:.1f} s incl. compile; {base['divergences']} divergences; "
              f"max R-hat {base['max_rhat']:.4f}; min bulk ESS {base['min_ess_bulk']:.0f}; {base['ess_per_s']:.3f} ESS/s")  # fmt: skip
        print(f"ESS/s ratio il2treg / obvious: {ours['ess_per_s'] / base['ess_per_s']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
