# il2treg: the two commands of the README's Quickstart, and a few more.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint bench bench-quick bench-scaling bench-simulate bench-fit bench-bayes bench-regimens bench-bootstrap bench-zarr sbc recovery clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/il2treg simulate --regimen lupil2 --n 500 --seed 0 --out out/demo --force
	$(VENV)/bin/il2treg fit fits/lupil2_virtual/fit.toml --out out/demo-fit --force

# One file per worker (--dist loadfile): a module's fixtures and compiled programs stay together.
test: $(STAMP)  ## the fast tier: everything not marked slow
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder -m "not slow" --durations=15

test-all: $(STAMP)  ## every test: the fast tier, the long fits and the notebooks (what CI runs)
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=20

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/run.py --json benchmarks/results/run.json

bench-quick: $(STAMP)
	$(PY) benchmarks/run.py --quick

bench-simulate: $(STAMP)
	$(PY) benchmarks/simulate.py

bench-scaling: $(STAMP)
	$(PY) benchmarks/scaling.py --json benchmarks/results/scaling_$$($(PY) -c 'import jax; print(jax.devices()[0].platform)').json --report benchmarks/RESULTS.md

bench-regimens: $(STAMP)
	$(PY) benchmarks/regimens.py --json benchmarks/results/regimens.json

bench-bootstrap: $(STAMP)  ## refits per second with 1 and 2 Dask workers (issue 29: ratio >= 1.6)
	$(PY) benchmarks/bootstrap.py --json benchmarks/results/bootstrap.json

bench-zarr: $(STAMP)  ## peak memory of a 10^6-patient simulation to Zarr (issue 29: <= 2 GB); about 20 minutes on 2 cores
	$(PY) benchmarks/zarr_memory.py --json benchmarks/results/zarr_memory.json

bench-fit: $(STAMP)
	$(PY) benchmarks/fit.py

bench-bayes: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/bayes.py --baseline --baseline-chains 2 --baseline-warmup 150 --baseline-samples 150 --json benchmarks/results/bayes.json

sbc: $(STAMP)
	$(PY) benchmarks/sbc.py --replicates 50 --json benchmarks/results/sbc.json

recovery: $(STAMP)
	$(PY) benchmarks/recovery.py --replicates 20 --json benchmarks/results/recovery.json

clean:
	rm -rf $(VENV) out .pytest_cache
