# Entry points: `make demo` (the main job) and `make test`.  `make setup` is idempotent.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
SYS_STAMP := $(VENV)/.sysdeps-stamp
PYTEST_ARGS ?=
# the pretrained speaker encoder (weights inside the package); its dependencies come with .[quality]
RESEMBLYZER := resemblyzer==0.1.4
# model version of the demo's tiny base: v2, v2Pro or v2ProPlus (GSV_DEMO_VERSION=v2ProPlus make demo)
GSV_DEMO_VERSION ?= v2

.PHONY: setup sysdeps test test-fast demo demo-quality protos clean cpp-client gpu-check cluster cluster-status \
	cluster-down k8s-render

setup: $(STAMP) $(SYS_STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps $(RESEMBLYZER)
	@touch $(STAMP)

# System packages some commands need: espeak-ng speaks the synthetic training/demo data; chromium
# runs the playground test headless (tests/server/test_http.py); openssl makes its TLS certificate;
# postgresql (the shared voice store) and nginx (the load balancer) run the local cluster and its
# tests (tests/cluster).
$(SYS_STAMP): Makefile
	@mkdir -p $(VENV)
	@missing=""; \
	command -v espeak-ng >/dev/null 2>&1 || missing="$$missing espeak-ng"; \
	{ command -v chromium || command -v chromium-browser; } >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	{ command -v pg_ctl || ls /usr/lib/postgresql/*/bin/pg_ctl; } >/dev/null 2>&1 || missing="$$missing postgresql"; \
	{ command -v nginx || test -x /usr/sbin/nginx; } >/dev/null 2>&1 || missing="$$missing nginx"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $(SYS_STAMP)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(PY) scripts/demo.py --out out --version $(GSV_DEMO_VERSION)

# The long variant (<= 60 minutes on 2 cores): SoVITS trains until the speaker similarity stops
# improving; the similarity-vs-minutes curve goes to benchmarks/results/.
QUALITY_CURVE ?= benchmarks/results/demo-quality-$(shell date +%Y-%m-%d).json
demo-quality: setup
	$(PY) scripts/demo.py --out out/demo-quality --version $(GSV_DEMO_VERSION) --minutes 45 --curve $(QUALITY_CURVE)

# The GPU measurement (needs a CUDA machine; exits 2 at once without one):
#   make gpu-check BUNDLE=bundles/v2 OUT=gpu-results
gpu-check: setup
	bash scripts/gpu_check.sh "$(BUNDLE)" "$(OUT)"

clean:
	rm -rf $(VENV) .pytest_cache out

# Regenerate the gRPC stubs (committed; tests/test_protos.py checks they are up to date).
protos: setup
	$(PY) -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. protos/tts/v1/tts.proto

# C++ client + gsv_say_cpp example (clients/cpp; not needed by `make test`, whose C++ test skips
# without the toolchain).  Installs the Debian/Ubuntu toolchain with apt-get when something is missing.
CPP_APT := libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler pkg-config cmake g++
cpp-client:
	@if ! { command -v cmake && command -v g++ && command -v protoc && command -v grpc_cpp_plugin \
			&& pkg-config --exists grpc++; } >/dev/null 2>&1; then \
		echo "installing the C++ gRPC toolchain (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CPP_APT) >/dev/null; \
	fi
	cmake -S clients/cpp -B clients/cpp/build -DCMAKE_BUILD_TYPE=Release
	cmake --build clients/cpp/build -j2
	@echo "built clients/cpp/build/gsv_say_cpp"

# A local cluster of real processes: a throwaway PostgreSQL, $(REPLICAS) gsv-serve replicas sharing it,
# nginx in front (deploy/lb); prints the one address clients use.  `make cluster-status`, `make cluster-down`.
REPLICAS ?= 3
BUNDLE ?= out/demo/voice
CLUSTER_DIR ?= /tmp/gsv-cluster
cluster: setup
	$(PY) scripts/cluster.py up --replicas $(REPLICAS) --bundle $(BUNDLE) --state-dir $(CLUSTER_DIR)

cluster-status: setup
	$(PY) scripts/cluster.py status --state-dir $(CLUSTER_DIR)

cluster-down: setup
	$(PY) scripts/cluster.py down --state-dir $(CLUSTER_DIR)

# The Kubernetes manifests rendered offline (kubectl client only, no cluster needed).
K8S_TARGET ?= overlays/cpu
k8s-render:
	kubectl kustomize deploy/k8s/$(K8S_TARGET)
