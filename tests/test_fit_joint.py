"""Published summaries beside individual data in one population fit (il2treg.fit.joint): the
term against the summaries-only program, its gradient, a fit file with [summaries] through the
CLI, and bad input."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import il2treg
from il2treg.errors import SpecError
from il2treg.fit.aggregate import SummaryProgram, se_of_mean
from il2treg.fit.assemble import initial_psi, make_objective
from il2treg.fit.spec import read_fit_spec
from il2treg.model import Parameters
from il2treg.regimen import Regimen

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "pk_1cmt_oral.toml"
#: The cohort's truth (model units): ka, CL and V off the file's 1/h, L/h and L by +25%, +30%, -20%.
TRUTH = {"ka": 1.25, "CL": 2.6, "V": 16.0}
OMEGA = {"CL": 0.3, "V": 0.2}
LATE_H, EARLY_H = (6, 12, 24), (0.75, 1, 1.5, 2, 3)


def _simulate(model, n: int, hours, rng) -> np.ndarray:
    """Observed concentrations (10% proportional error) of ``n`` patients after one 100 mg dose."""
    names = model.parameter_names
    theta = np.tile(np.asarray(model.typical().values), (n, 1))
    truth = model.with_values(**TRUTH).typical()
    for p in TRUTH:
        theta[:, names.index(p)] = float(truth[p])
    for p, w in OMEGA.items():
        theta[:, names.index(p)] *= np.exp(w * rng.standard_normal(n))
    f = np.asarray(il2treg.simulate(model, Regimen(jnp.asarray([0.0]), jnp.asarray([100.0])), np.asarray(hours) / 24.0, Parameters(jnp.asarray(theta), names))["conc"])
    return f * (1.0 + 0.1 * rng.standard_normal(f.shape))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """30 patients sampled late (6, 12, 24 h: absorption barely seen) as a data file, and the
    mean concentrations of another 200 patients sampled early (0.75-3 h) as a summaries file;
    a fit file with both, and one with the data alone."""
    folder = tmp_path_factory.mktemp("joint")
    model = il2treg.load_model(MODEL)
    rng = np.random.default_rng(3)
    late = _simulate(model, 30, LATE_H, rng)
    lines = ["ID,TIME,AMT,DV"]
    for i, row in enumerate(late):
        lines += [f"{i + 1},0,100,0"] + [f"{i + 1},{t},0,{v:.10g}" for t, v in zip(LATE_H, row, strict=True)]
    (folder / "data.csv").write_text("\n".join(lines) + "\n")
    early = _simulate(model, 200, EARLY_H, rng)
    entries = ['[arms.early]\ndose = 100\ninterval_days = 1\nn = 1\nstudy = "early sampling"\n']
    for t, col in zip(EARLY_H, early.T, strict=True):
        entries.append(f'[[summaries]]\narm = "early"\nobservable = "conc"\ntime = {t / 24.0!r}\nstatistic = "mean"\n'
                       f"value = {float(col.mean())!r}\nn = 200\nse = {se_of_mean(float(col.std(ddof=1)), 200)!r}\n")  # fmt: skip
    (folder / "summaries.toml").write_text("\n".join(entries))
    body = (f'model = "{MODEL.as_posix()}"\ndata = "data.csv"\ntime_unit = "h"\n[parameters.ka]\n[parameters.CL]\ncv_percent = 30\n'
            '[parameters.V]\ncv_percent = 20\n[error.conc]\nkind = "proportional"\nsigma_prop = 0.1\n')  # fmt: skip
    (folder / "fit.toml").write_text(body + '[summaries]\nfile = "summaries.toml"\nn_draws = 1000\n')
    (folder / "fit_data.toml").write_text(body)
    return folder


def test_the_term_is_the_summaries_programs_objective_and_its_gradient_is_exact(study):
    """With a diagonal omega the population fit's summary term is the summaries-only program's
    objective at the same typical values, omegas and draws (two paths: individual_theta against
    theta e^(omega z)); its forward-mode gradient matches central differences; its Gauss-Newton
    rows hold the statistics' slopes over their SEs."""
    spec = read_fit_spec(study / "fit.toml")
    problem = spec.problem()
    psi0 = initial_psi(spec, problem, spec.residual_model())
    term = make_objective(spec, problem, psi0).summaries
    data = spec.summaries.data
    program = SummaryProgram(spec.model, data.regimens, data.summaries, ("ka", "CL", "V"), ("CL", "V"), {}, {}, spec.summaries.n_draws, 0, problem.options)
    psi = psi0 + jnp.asarray([0.2, 0.1, -0.05, 0.1, 0.1, 0.0])  # off the start in every direction the term reads
    theta = np.exp(np.asarray(psi[:3]))  # log-transformed: u = log theta (internal units)
    x = jnp.asarray([*np.log(theta), *np.asarray(psi[3:5])])
    (stats, _, _), failed = program.predicted(x)
    assert not np.any(np.asarray(failed))
    assert float(term.neg2ll(psi)) == pytest.approx(float(program.ofv((stats, jnp.zeros(5), jnp.zeros(5)))), rel=1e-10)
    np.testing.assert_allclose(np.asarray(term.predicted(psi)[0]), np.asarray(stats), rtol=1e-10)
    gradient = np.asarray(term.gradient(psi))
    assert gradient[5] == 0.0 and term.directions == (0, 1, 2, 3, 4)  # sigma moves no virtual patient
    h = 1e-5
    fd = [(float(term.neg2ll(psi.at[k].add(h))) - float(term.neg2ll(psi.at[k].add(-h)))) / (2 * h) for k in range(5)]
    np.testing.assert_allclose(gradient[:5], fd, rtol=1e-5)
    rows = np.asarray(term.curvature_rows(psi))
    se = np.asarray([s.se for s in data.summaries])
    z = (np.asarray(stats) - np.asarray([s.value for s in data.summaries])) / se
    np.testing.assert_allclose(rows.T @ z, gradient, rtol=1e-8)  # sum_j z_j r_j = sum_j 2 z_j grad z_j: the gradient of sum z^2


@pytest.mark.slow
def test_the_objective_adds_the_term_once_with_its_gradient_and_curvature(study):
    """The threaded population objective with [summaries] minus the same without: its value by the
    term, its exact gradient by the term's gradient, and its covariance step's R (forward
    differences of the gradient) by the term's Hessian (central differences of its gradient)."""
    from il2treg.fit.estimate import ofv_hessian

    spec = read_fit_spec(study / "fit.toml")
    problem = spec.problem()
    psi0 = initial_psi(spec, problem, spec.residual_model())
    joint, alone = make_objective(spec, problem, psi0), make_objective(dataclasses.replace(spec, summaries=None), problem)
    term = joint.summaries
    psi = psi0 + jnp.asarray([0.1, 0.05, -0.05, 0.1, -0.1, 0.1])
    n = joint.patients.obs_time.shape[0]
    inner = joint.inner(psi, jnp.zeros((n, problem.n_random)))
    include = jnp.ones(n, dtype=bool)
    assert float(joint.value(psi, inner, include)) - float(alone.value(psi, inner, include)) == pytest.approx(float(term.neg2ll(psi)), rel=1e-9)
    np.testing.assert_allclose(np.asarray(joint.gradient(psi, inner.eta, include)) - np.asarray(alone.gradient(psi, inner.eta, include)),
                               np.asarray(term.gradient(psi)), rtol=1e-9, atol=1e-9)  # fmt: skip
    r = ofv_hessian(joint, psi, inner, include) - ofv_hessian(alone, psi, inner, include)
    h = 1e-4
    fd = np.stack([(np.asarray(term.gradient(psi.at[k].add(h))) - np.asarray(term.gradient(psi.at[k].add(-h)))) / (2 * h) for k in range(len(psi))], axis=1)
    np.testing.assert_allclose(r, 0.5 * (fd + fd.T), rtol=2e-3, atol=1e-3 * np.max(np.abs(fd)))


def test_an_omega_block_correlates_the_virtual_patients_and_a_bound_met_adds_no_curvature(study, tmp_path):
    """With CL and V in one block the virtual patients are theta e^(L z), L the Cholesky factor of
    Omega built here from the omegas and the correlation; the gradient in the correlation's
    direction matches central differences. A lower bound met by far gets a Gauss-Newton row of
    about 0, one violated by 20 SEs the row of a value (the curvature of -2 log Phi tends to that of z^2)."""
    text = (study / "summaries.toml").read_text()
    (tmp_path / "data.csv").write_text((study / "data.csv").read_text())
    (tmp_path / "summaries.toml").write_text(text)
    (tmp_path / "fit.toml").write_text((study / "fit.toml").read_text().replace("[error.conc]", '[[omega_block]]\nparameters = ["CL", "V"]\ncorrelation = 0.5\n[error.conc]'))
    spec = read_fit_spec(tmp_path / "fit.toml")
    problem = spec.problem()
    assert problem.psi_names == ("ka", "CL", "V", "omega_CL", "omega_V", "corr_CL_V", "sigma_prop_conc")
    psi = initial_psi(spec, problem, spec.residual_model())
    predicted = float(make_objective(spec, problem, psi).summaries.predicted(psi)[0][0])
    # two lower bounds on the first summary's statistic: one met by far, one missed by 20 SEs (the draws are the arm's: the same)
    first = text.index("[[summaries]]")
    entry = text[first : text.index("[[summaries]]", first + 1)]
    se = float(entry.split("se = ")[1].split("\n")[0])
    value = "value = " + entry.split("value = ")[1].split("\n")[0]
    met, missed = (entry.replace(value, f"value = {v!r}") + 'bound = "lower"\n' for v in (0.2 * predicted, predicted + 20 * se))
    (tmp_path / "summaries.toml").write_text(text + "\n" + met + "\n" + missed)
    spec = read_fit_spec(tmp_path / "fit.toml")
    term = make_objective(spec, problem, psi).summaries
    omega = np.exp(np.asarray(psi[3:5]))
    chol = np.linalg.cholesky(np.diag(omega) @ np.asarray([[1.0, 0.5], [0.5, 1.0]]) @ np.diag(omega))
    names = spec.model.parameter_names
    thetas = np.tile(np.asarray(spec.model.typical().values), (1, spec.summaries.n_draws, 1))
    thetas[..., [names.index("ka"), names.index("CL"), names.index("V")]] = np.exp(np.asarray(psi[:3]))
    thetas[..., [names.index("CL"), names.index("V")]] *= np.exp(np.asarray(term.z) @ chol.T)
    (stats, _, _), _ = term.program.statistics(jnp.asarray(thetas))
    np.testing.assert_allclose(np.asarray(term.predicted(psi)[0]), np.asarray(stats), rtol=1e-10)
    h = 1e-5
    fd = (float(term.neg2ll(psi.at[5].add(h))) - float(term.neg2ll(psi.at[5].add(-h)))) / (2 * h)
    assert float(term.gradient(psi)[5]) == pytest.approx(fd, rel=1e-4) and abs(fd) > 1e-3  # the adaptive solves make differences noisier here than on the diagonal
    rows = np.linalg.norm(np.asarray(term.curvature_rows(psi)), axis=1)
    assert rows[-2] < 1e-6 * rows[0] and rows[-1] == pytest.approx(rows[0], rel=0.01)


@pytest.mark.slow
def test_summaries_beside_late_data_recover_absorption_the_data_alone_do_not_pin(study, tmp_path):
    """The late samples barely see absorption: fitted alone, ka's RSE is 15.6% (measured); with
    the early arm's published means beside them, the joint fit converges with every typical value
    within 15% of the truth, the omegas' 95% intervals hold theirs, and ka's RSE is under half
    the data-only fit's. The results folder holds
    summaries.csv, whose -2LL terms are in the OFV, and reads back bit for bit."""
    from typer.testing import CliRunner

    from il2treg.cli import app
    from il2treg.fit import load_fit, save_fit

    runner = CliRunner()
    for name in ("fit", "fit_data"):
        result = runner.invoke(app, ["fit", str(study / f"{name}.toml"), "--out", str(tmp_path / name), "--no-figures"])
        assert result.exit_code == 0, result.output
    joint, alone = load_fit(tmp_path / "fit"), load_fit(tmp_path / "fit_data")
    assert joint.converged and alone.converged
    est = joint.estimates.set_index("parameter")
    for name, value in TRUTH.items():
        assert est.loc[name, "estimate"] == pytest.approx(value, rel=0.15), (name, est.loc[name, "estimate"])
    for name, value in OMEGA.items():  # 30 patients inform an omega to about +-13% (1/sqrt(2n)): its interval holds the truth
        assert est.loc[f"omega_{name}", "ci_low"] < value < est.loc[f"omega_{name}", "ci_high"], est.loc[f"omega_{name}"]
    rse = lambda r: float(r.estimates.set_index("parameter").loc["ka", "rse_percent"])
    assert rse(joint) < 0.5 * rse(alone), (rse(joint), rse(alone))
    table = joint.summaries
    assert len(table) == len(EARLY_H) and set(table["study"]) == {"early sampling"} and (table["failed_in_arm"] == 0).all()
    assert np.max(np.abs(table["z"])) < 3.5
    assert "## Published summaries" in (tmp_path / "fit" / "report.md").read_text(encoding="utf-8")
    assert alone.summaries is None and not (tmp_path / "fit_data" / "summaries.csv").exists()
    save_fit(joint, tmp_path / "again")
    assert load_fit(tmp_path / "again").equals(joint)
    # the OFV holds the summaries' term: the data-only objective at the joint estimates plus it
    spec = read_fit_spec(study / "fit.toml")
    term = make_objective(spec, spec.problem()).summaries
    assert float(term.neg2ll(jnp.asarray(joint.psi))) == pytest.approx(float(table["neg2ll"].sum()), rel=1e-9)


@pytest.mark.parametrize("summaries, files, message", [
    ('file = "missing.toml"', {}, r"\[summaries\]: summaries file .*missing.toml' does not exist"),
    ('file = "s.toml"\ncolour = 1', {"s.toml": ""}, r"\[summaries\]: unknown key 'colour'"),
    ("n_draws = 10", {}, r"\[summaries\]: no `file`"),
    ('file = "s.toml"\nn_draws = 1', {"s.toml": ""}, r"n_draws must be an integer >= 2, got 1"),
    ('file = "s.toml"\nstudies = ["B"]', {"s.toml": '[arms.a]\ndose = 100\ninterval_days = 1\nn = 1\nstudy = "A"\n[[summaries]]\narm = "a"\nobservable = "conc"\n'
     'time = 0.1\nstatistic = "mean"\nvalue = 1.0\nn = 10\nse = 0.1\n'}, r"no study 'B' in s.toml\. Fix: use some of A"),
    ('file = "s.toml"', {"s.toml": '[arms.a]\ndose = 100\ninterval_days = 1\nn = 1\n[[summaries]]\narm = "a"\nobservable = "treg"\n'
     'time = 0.1\nstatistic = "mean"\nvalue = 1.0\nn = 10\nse = 0.1\n'}, r"s.toml: summary 0 \(a, treg, day 0.1\): unknown observable 'treg'"),
    ('file = "s.toml"', {"s.toml": '[arms.a]\ninterval_days = 1\nn = 1\n[[summaries]]\narm = "a"\nobservable = "conc"\n'
     'time = 0.1\nstatistic = "mean"\nvalue = 1.0\nn = 10\nse = 0.1\n'}, r"s.toml: arms.a: give one of `dose` .* or `dose_miu_per_m2`"),
    ('file = "s.toml"', {"s.toml": '[arms.a]\ndose_miu_per_m2 = 1\ninterval_days = 1\nn = 1\n[[summaries]]\narm = "a"\nobservable = "conc"\n'
     'time = 0.1\nstatistic = "mean"\nvalue = 1.0\nn = 10\nse = 0.1\n'}, r"a dose per m² needs the body-surface area\. Fix: add bsa_m2"),
    ('file = "s.toml"', {"s.toml": '[arms.a]\ndose = 100\ninterval_days = 1\nn = 1\n[[summaries]]\narm = "b"\nobservable = "conc"\n'
     'time = 0.1\nstatistic = "mean"\nvalue = 1.0\nn = 10\nse = 0.1\n'}, r"summaries\[0\]: arm 'b' has no \[arms.b\] table"),
    ('file = "s.toml"', {"s.toml": "[arms.a\n"}, r"s.toml: not valid TOML"),
    ('file = "s.toml"\nsigma_prop = { conc = -1 }', {"s.toml": ""}, r"sigma_prop must be a table of observables and residual SDs > 0"),
    ('file = "s.toml"\n[optimiser]\ncovariance_matrix = "sandwich"', {"s.toml": ""}, r"covariance_matrix = \"sandwich\" with \[summaries\]: the sandwich's S holds the patients' gradients only"),
    ('file = "s.toml"', {"s.toml": '[arms.a]\ndose = 100\ninterval_days = 1\nn = 1\n[[summaries]]\narm = "a"\nobservable = "conc"\n'
     'time = 0.1\nstatistic = "sd"\nvalue = 1.0\nn = 10\nse = 0.1\n'}, r"summary 0 \(a, conc, day 0.1\) is an SD, which needs the residual SD of 'conc'"),
    ('file = "s.toml"', {"s.toml": '[arms.a]\ndose = 100\ninterval_days = 1\nn = 1\n[[summaries]]\narm = "a"\nobservable = "conc"\n'
     'time = 0.1\nstatistic = "mean"\nvalue = 1.0\nn = 10\nse = 0.1\nthreshold = 2.0\n'}, r"summaries\[0\]: threshold is given but a mean does not use it"),
    ('file = "s.toml"', {"s.toml": '[arms.a]\ndose = 100\ninterval_days = 1\nn = 1\n[[summaries]]\narm = "a"\nobservable = "conc"\n'
     'time = 0.1\nstatistic = "mean"\nvalue = 1.0\nn = 10.5\nse = 0.1\n'}, r"summaries\[0\]: n must be a whole number of patients, got 10.5"),
    ('file = "s.toml"', {"s.toml": 'summaries = []\n[arms.a]\ndose = 100\ninterval_days = 1\nn = true\n'}, r"arms.a: n must be a whole number of doses >= 1, got True"),
], ids=["missing", "key", "no-file", "draws", "study", "observable", "dose", "bsa", "arm", "toml", "sigma", "sandwich", "sd-sigma", "threshold", "n-float", "n-bool"])  # fmt: skip
def test_a_bad_summaries_table_or_file_is_named_before_any_computation(tmp_path, summaries, files, message):
    (tmp_path / "data.csv").write_text("ID,TIME,AMT,DV\n1,0,100,0\n1,2,0,3.0\n")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "fit.toml").write_text(f'model = "{MODEL.as_posix()}"\ndata = "data.csv"\ntime_unit = "h"\n[parameters.CL]\n[error.conc]\nkind = "proportional"\n'
                                       f"[summaries]\n{summaries}\n")  # fmt: skip
    with pytest.raises(SpecError, match=message):
        read_fit_spec(tmp_path / "fit.toml")


def test_only_foce_fits_summaries_and_the_shipped_studies_can_be_named(study, tmp_path):
    """SAEM and NUTS refuse a fit file with [summaries] before computing; "il2treg:study_summaries"
    with `studies` reads only those studies' summaries from the shipped file."""
    from il2treg.fit import Nuts, Saem, compute_fit

    spec = read_fit_spec(study / "fit.toml")
    for estimator in (Saem(), Nuts()):
        with pytest.raises(SpecError, match=rf"--method {estimator.name} does not fit published summaries"):
            compute_fit(spec, estimator=estimator)
    (tmp_path / "fit.toml").write_text(
        'model = "il2_treg_sledai"\ndata = "il2treg:lupil2_virtual"\nignore_dvids = ["il2_pM", "treg_pct_cd4", "nk56bright_per_uL", "tconv_per_uL", "cd25_treg_rel", "sledai"]\n'
        '[parameters.emax_treg]\n[error.treg_per_uL]\nkind = "proportional"\n[summaries]\nfile = "il2treg:study_summaries"\nstudies = ["DILT1D", "Koreth 2011"]\n'
    )  # fmt: skip
    chosen = read_fit_spec(tmp_path / "fit.toml").summaries
    assert set(chosen.data.studies) == {"DILT1D", "Koreth 2011"} and chosen.data.study_names == ("DILT1D", "Koreth 2011")
    assert len(chosen.data.summaries) == sum(s in ("DILT1D", "Koreth 2011") for s in il2treg.datasets.study_summaries().studies)

