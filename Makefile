# Ferry: `make demo` and `make test` each bootstrap .venv on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ferry-installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check
PYTEST_ARGS ?=
# The real-control-plane test tier finds etcd, kube-apiserver, kube-controller-manager and kubectl
# through KUBEBUILDER_ASSETS (as envtest does); beside a checkout with ../shared it is set for you.
SHARED_K8S := $(abspath ../shared/k8s/bin)
ifeq ($(origin KUBEBUILDER_ASSETS),undefined)
ifneq ($(wildcard $(SHARED_K8S)/kube-apiserver),)
export KUBEBUILDER_ASSETS := $(SHARED_K8S)
endif
endif

.PHONY: install demo test lint golden clean bench

install: $(STAMP)

# torch first, pinned exactly: a looser spec (or letting another package pull it) drags in a
# CUDA build with several GB of packages. Everything else is pinned by constraints.txt.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[train,serve,optimize,operator,sweep,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m ferry.demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The journey end to end on the real control plane (chart, MLflow on PostgreSQL and S3, the
# operator, training, serving): tests/test_e2e.py alone.
.PHONY: e2e
e2e: $(STAMP)
	$(BIN)/python -m pytest -m e2e $(PYTEST_ARGS)

# Regenerate the golden manifests under manifests/examples and the ModelPipeline CRD (never in CI).
golden: $(STAMP)
	FERRY_UPDATE_GOLDEN=1 $(BIN)/python -m pytest tests/test_golden.py tests/test_deploy.py tests/test_operator_crd.py -k "golden or shipped"

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .ferry .pytest_cache
