# EmbArk developer commands. `make help` lists them.
# Everything installs from package registries (PyPI, Maven Central); nothing from a model hub.

SHELL := /bin/bash
.DEFAULT_GOAL := help
UV ?= $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
PY := .venv/bin/python
ARTIFACTS ?= artifacts
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: help setup models run dev test test-unit test-integration test-cluster lint format proto proto-check edge edge-check \
        deploy-check devstack-start devstack-stop devstack-reset clean \
        bench bench-report bench-tools bench-archive bench-similar \
        bench-hotpath bench-pipeline bench-cluster bench-load bench-profile bench-encoders bench-encoders-openvino bench-chaos bench-http

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  make %-18s %s\n", $$1, $$2}'

$(UV):
	python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv

setup: | $(UV) ## install the locked environment into .venv (uv sync --frozen)
	$(UV) sync --frozen --all-extras

models: setup ## build and validate every catalog model into ./artifacts (cached by content hash)
	.venv/bin/retina models build --artifacts $(ARTIFACTS)

run: models ## THE QUICKSTART: start embark dev, show a miss become a hit (text and image), exit
	.venv/bin/embark demo --artifacts $(ARTIFACTS)

dev: models ## run EmbArk + KFC + Retina in one process on embedded backends until Ctrl-C
	.venv/bin/embark dev --artifacts $(ARTIFACTS)

test: setup lint proto-check edge-check ## set up everything and run every test (unit, integration, e2e)
	.venv/bin/pytest

test-unit: setup ## the fast tests only (no Cassandra/Kafka)
	.venv/bin/pytest tests/unit

test-integration: setup ## real Cassandra and Kafka (started by the tests via devstack/)
	.venv/bin/pytest tests/integration tests/e2e

test-cluster: setup ## node loss on 3 Cassandra nodes + 3 Kafka brokers (devstack/cluster.sh; ~15 min)
	.venv/bin/pytest -m cluster tests/cluster -s

edge: ## build the native hit front (edge/, Go, modules from the Go proxy) into edge/bin/edge
	cd edge && go build -buildvcs=false -o bin/edge .

edge-check: edge ## the edge's gofmt, go vet and Go unit tests
	cd edge && test -z "$$(gofmt -l .)" || { gofmt -l . ; echo "gofmt: run gofmt -w edge/"; exit 1; }
	cd edge && go vet ./... && go test ./...

lint: setup ## ruff (lint + format check) and mypy --strict
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

format: setup ## apply ruff's formatting and safe fixes
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

proto: setup ## regenerate embark_api/ from proto/ (with type stubs)
	scripts/gen_proto.sh

proto-check: setup ## fail if the committed stubs differ from freshly generated ones
	.venv/bin/pytest -q tests/unit/test_proto_stubs.py

deploy-check: setup ## check Dockerfile, docker-compose.yml, deploy/nomad against the settings classes
	.venv/bin/pytest -q tests/unit/deploy

devstack-start: ## start real Cassandra and Kafka on loopback (jars from Maven Central)
	devstack/devstack.sh start all

devstack-stop: ## stop them
	devstack/devstack.sh stop all

devstack-reset: ## stop them and wipe their data
	devstack/devstack.sh reset all

# Benchmarks (docs/performance.md): real Cassandra and Kafka (make devstack-start), one at a
# time; each prints its tables with ratios, writes bench/results/*.json and docs/img/*.png.
# ghz, the native gRPC load generator the hit-path benchmarks drive (a Go module, built with
# `go install` into the git-ignored bench/bin/; needs a Go toolchain).
GHZ_VERSION ?= v0.93.0
bench/bin/ghz:
	GOBIN=$(CURDIR)/bench/bin go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)

bench/bin/loadgen: bench/loadgen/main.go bench/loadgen/go.mod
	cd bench/loadgen && go build -buildvcs=false -o ../bin/loadgen .

bench-tools: bench/bin/ghz bench/bin/loadgen ## build the benchmarks' native load generators (ghz, bench/loadgen) into bench/bin/

bench: bench-hotpath bench-pipeline bench-archive bench-profile bench-report ## run the benchmarks, regenerate docs/performance.md's tables

bench-report: ## regenerate docs/performance.md's tables (and charts) from bench/results/*.json
	.venv/bin/python -m bench.report && .venv/bin/python -m bench.charts

bench-hotpath: models bench/bin/ghz bench/bin/loadgen edge ## (a)+(b) hit path through gRPC, driven by ghz: LRU (1 and N workers) vs Cassandra vs encoding, then the bare-server floor
	.venv/bin/python -m bench.hotpath && .venv/bin/python -m bench.grpc_floor && .venv/bin/python -m bench.charts

bench-archive: models bench/bin/ghz ## hits by archive size (10k, 100k rows), the LRU's Zipf hit-ratio curve, float16 fidelity
	.venv/bin/python -m bench.archive

bench-pipeline: models ## (c) miss -> stored latency at idle; KFC vs Retina alone at the same calls in flight
	.venv/bin/python -m bench.pipeline && .venv/bin/python -m bench.kfc_retina && .venv/bin/python -m bench.charts

bench-chaos: models ## (d) 10,000 misses clean vs with 2% poison (flaky hosts, forged jobs): ratio
	.venv/bin/python -m bench.chaos

bench-load: models ## Locust: 1,000 gRPC users, mixed hits and misses, 75 s, on the real stack
	.venv/bin/python -m bench.load.run && .venv/bin/python -m bench.charts

bench-http: models ## hits through HTTP (/v1/embeddings float and base64, /embed) beside gRPC, one run
	.venv/bin/python -m bench.http_vs_grpc

bench-similar: models ## FindSimilar at 100k rows: Cassandra ANN vs exact (recall, latency), write cost, KFC with search on vs off
	.venv/bin/python -m bench.similar_corpus --artifacts artifacts
	.venv/bin/python -m bench.similar --compact && .venv/bin/python -m bench.similar_kfc

bench-cluster: models ## replication's cost: hits and miss->stored on the single node beside the 3+3 cluster
	.venv/bin/python -m bench.cluster

bench-profile: models ## where a hit's time goes: embark serve under cProfile, grouped by layer
	.venv/bin/python -m bench.profile_hotpath

# PyTorch is the encoder benchmark's reference column only, never a project dependency (PyPI's
# wheel pulls ~5 GB of CUDA libraries; ~1 min from PyPI): it goes into its own git-ignored venv
# beside the locked environment (installed --no-deps from the lock, so nothing else moves).
BENCH_VENV := .venv-bench
# onnx-ir: onnxruntime's MatMulNBits quantizer; ctranslate2: another runtime (its converter uses
# the locked transformers); both for variants bench/encoders.py compares (not served)
BENCH_TORCH := torch==2.15.0 efficientnet-lite-pytorch==0.1.0 onnx-ir==1.1.0 ctranslate2==4.8.5

$(BENCH_VENV)/.installed: uv.lock | $(UV)
	$(UV) venv --allow-existing --python 3.11 $(BENCH_VENV)
	$(UV) export --frozen --all-extras --no-dev --no-emit-project --no-hashes -o $(BENCH_VENV)/requirements.txt
	$(UV) pip install --python $(BENCH_VENV)/bin/python --no-deps -r $(BENCH_VENV)/requirements.txt
	$(UV) pip install --python $(BENCH_VENV)/bin/python $(BENCH_TORCH)
	touch $@

bench-encoders: models $(BENCH_VENV)/.installed ## encoders vs PyTorch fp32: ONNX fp32/int8, text+image, served vs raw
	PYTHONPATH=$(CURDIR) $(BENCH_VENV)/bin/python -m bench.encoders

bench-encoders-openvino: models $(BENCH_VENV)/.installed ## the OpenVINO, native-kernel and CTranslate2 text rows only, with PyTorch and ORT int8 (~6 min)
	PYTHONPATH=$(CURDIR) $(BENCH_VENV)/bin/python -m bench.encoders --only openvino

clean: ## remove built models, local data and caches (keeps .venv and .devstack jars)
	rm -rf $(ARTIFACTS) data .pytest_cache .mypy_cache .ruff_cache
