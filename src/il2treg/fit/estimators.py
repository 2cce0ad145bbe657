"""Estimators as objects: what :func:`il2treg.fit.compute_fit` and :func:`il2treg.fit.run_fit` run.

A fit is configured by the estimator passed to it, as diffrax takes a solver::

    from il2treg.fit import Foce, Nuts, Saem, SaemSettings, run_fit

    run_fit("fits/lupil2_virtual/fit.toml", "out", estimator=Foce())                         # FOCE-I (the default)
    run_fit("fits/lupil2_virtual/fit.toml", "out", estimator=Saem(SaemSettings(seed=3)))      # SAEM, its own settings
    run_fit("fits/lupil2_virtual/fit.toml", "out", estimator=Nuts())                         # Laplace, then NUTS

An estimator without settings takes them from the fit file (``[optimiser]``, ``[saem]``,
``[nuts]``). Each estimator has a ``name``, which the results folder records (``summary.json``'s
``method``) and the CLI's ``--method`` reads (:func:`estimator_named`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

from il2treg.errors import InputError, SpecError
from il2treg.fit.bayes import NutsSettings
from il2treg.fit.estimate import PopulationFit, fit_population
from il2treg.fit.saem import SaemSettings, fit_saem


class Estimator:
    """What every estimator provides: its ``name`` and :meth:`estimate`."""

    name: ClassVar[str] = ""
    #: Whether the covariance step runs whatever the fit file says (NUTS starts from it).
    needs_covariance: ClassVar[bool] = False

    def estimate(self, spec, objective, psi0, callback: Callable[[dict], None]) -> PopulationFit:
        """The population estimates from ``psi0`` (without the covariance step)."""
        raise NotImplementedError

    #: Whether it estimates inter-occasion variability (:attr:`il2treg.fit.problem.FitProblem.iov`).
    supports_iov: ClassVar[bool] = False
    #: Whether it fits published summaries beside the data (a fit file's ``[summaries]``, :mod:`il2treg.fit.joint`).
    supports_summaries: ClassVar[bool] = False

    def check(self, problem, summaries: bool = False) -> None:
        """Raise :class:`~il2treg.errors.SpecError` where this estimator cannot fit ``problem``
        (with published ``summaries`` beside its data); called before anything is computed."""
        if summaries and not self.supports_summaries:
            raise SpecError(f"--method {self.name} does not fit published summaries ([summaries] in the fit file) yet: their term is added to the FOCE-I objective. "
                            "Fix: fit it with FOCE-I (--method foce), or remove [summaries].")  # fmt: skip
        if problem.iov and not self.supports_iov:
            raise SpecError(f"--method {self.name} does not estimate inter-occasion variability yet (iov on {', '.join(problem.iov)}). "
                            "Fix: fit it with FOCE-I (--method foce).")  # fmt: skip
        both = [n for n in problem.iov if n in problem.random]
        if problem.occasions == 1 and both:  # eta and kappa then enter every patient's data as their sum: only omega^2 + omega_IOV^2 is identifiable
            raise SpecError(f"every subject has one occasion in {problem.occasion!r}, so the inter-occasion variability of {both[0]!r} cannot be told from its variability between patients. "
                            "Fix: number each subject's occasions 1, 2, ... in that column, or drop iov_cv_percent (or cv_percent) from the parameter.")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Foce(Estimator):
    """FOCE-I (the Laplace approximation, NONMEM's FOCE with interaction): L-BFGS on the exact
    gradient of the OFV (:func:`il2treg.fit.estimate.fit_population`) with the fit file's
    ``[optimiser]`` settings. The posterior file holds draws from the normal approximation."""

    name: ClassVar[str] = "foce"
    supports_iov: ClassVar[bool] = True
    supports_summaries: ClassVar[bool] = True

    def estimate(self, spec, objective, psi0, callback) -> PopulationFit:
        opt = spec.optimiser
        return fit_population(objective, psi0, max_iter=opt.max_iter, ftol=opt.ftol, gtol=opt.gtol, covariance=False, callback=callback)


@dataclasses.dataclass(frozen=True)
class Saem(Estimator):
    """SAEM (:mod:`il2treg.fit.saem`); the OFV, the covariance and the posterior file are those
    of the FOCE-I objective at the SAEM estimates.

    Attributes:
        settings: the SAEM settings; ``None``: the fit file's ``[saem]``.
    """

    settings: SaemSettings | None = None
    name: ClassVar[str] = "saem"
    supports_iov: ClassVar[bool] = True

    def settings_for(self, spec) -> SaemSettings:
        return self.settings if self.settings is not None else spec.saem

    def estimate(self, spec, objective, psi0, callback) -> PopulationFit:
        return fit_saem(objective, psi0, self.settings_for(spec), covariance=False, callback=callback)


@dataclasses.dataclass(frozen=True)
class Nuts(Estimator):
    """The Laplace (FOCE-I) fit, then NUTS warm-started from it (:mod:`il2treg.fit.bayes`); the
    posterior file holds the NUTS posterior with its sample statistics, pointwise
    log-likelihood and posterior predictive draws.

    Attributes:
        settings: the NUTS settings; ``None``: the fit file's ``[nuts]``.
    """

    settings: NutsSettings | None = None
    name: ClassVar[str] = "nuts"
    supports_iov: ClassVar[bool] = True
    needs_covariance: ClassVar[bool] = True

    def settings_for(self, spec) -> NutsSettings:
        return self.settings if self.settings is not None else spec.nuts

    def estimate(self, spec, objective, psi0, callback) -> PopulationFit:
        return Foce().estimate(spec, objective, psi0, callback)


#: The estimators by name (the CLI's ``--method``, a results folder's ``method``).
ESTIMATORS: dict[str, type[Estimator]] = {cls.name: cls for cls in (Foce, Saem, Nuts)}


def estimator_named(name: str) -> Estimator:
    """The estimator called ``name`` (``foce``, ``saem`` or ``nuts``) with the fit file's settings.

    Raises:
        InputError: an unknown name, with the known ones.
    """
    if name not in ESTIMATORS:
        raise InputError(f"unknown estimation method {name!r}. Fix: use one of {', '.join(ESTIMATORS)}.")
    return ESTIMATORS[name]()
