"""Data shipped with il2treg: published summary tables with their citations, the published
studies' cell-level numbers encoded as fittable summaries, and a simulated LUPIL-2-like cohort
(simulated, not patient data) with the parameters that generated it."""

from il2treg.datasets.cohort import lupil2_virtual, lupil2_virtual_truth, simulate_cohort, write_cohort
from il2treg.datasets.reference import reference, reference_names
from il2treg.datasets.summaries import StudySummaries, read_summaries, study_summaries

__all__ = [
    "StudySummaries",
    "lupil2_virtual",
    "lupil2_virtual_truth",
    "read_summaries",
    "reference",
    "reference_names",
    "simulate_cohort",
    "study_summaries",
    "write_cohort",
]
