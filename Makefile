# bake: the two commands a newcomer needs are `make image` and `make test`.
SHELL := /bin/bash
export GOFLAGS ?= -mod=mod
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/bakeimg/bake/builder.Version=$(VERSION)
RECIPE ?= recipes/openclaw.yaml
OUT ?= out
# Expensive test fixtures (bootstrapped trees, cloud-image fixtures, the
# tailscale build, npm downloads) live here, keyed by their inputs, outside the
# checkout so that CI's fresh clone reuses them.
export BAKE_TEST_CACHE ?= /var/cache/bake-test

.PHONY: all deps bake image test unit integration vm bench fuzz clean

all: bake

deps:
	@bash scripts/install-deps.sh

bake:
	go build -ldflags '$(LDFLAGS)' -o bake ./cmd/bake

# First command: install what is missing, build bake, bake the default recipe.
image: deps bake
	RECIPE=$(RECIPE) OUT=$(OUT) bash scripts/make-image.sh

# Second command: every test tier. Unit tests need nothing; integration and VM
# tests need root and the tools deps installs, and start their own servers.
# Under make test a unit test whose tool is missing fails (internal/testenv).
# scripts/make-test.sh runs the tiers in two lanes: test/vm's first phase
# (TestDefaultRecipe, the load-sensitive real gateway, and the interrupt
# tests) in the background from the start, everything else under SCHED_IDLE beside
# it (vet, the race tests, unit, integration, then the other VM tests). Each
# tier's go test -json goes through internal/testreport; the whole logs are
# $(BAKE_TEST_CACHE)/TIER-test.log, the events TIER.json (tiers unit,
# integration, vm1 (lane 1), vm).
test: export BAKE_TEST_STRICT := 1
test: deps bake
	@bash scripts/make-test.sh

unit:
	go test ./...

# Every native fuzz target (func FuzzXxx in a *_test.go), one go test -fuzz
# run each for FUZZTIME, under a memory cap per process (FUZZMEM MiB);
# fails on any failing input and prints where go saved it
# (PKG/testdata/fuzz/FuzzXxx/...). See scripts/fuzz.sh for FUZZPARALLEL,
# FUZZ (a name filter) and the rest; results in BENCHMARKS.md.
FUZZTIME ?= 60s
fuzz:
	FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh

bench: deps bake
	bash scripts/install-deps.sh --bench
	bash scripts/bench.sh
	bash scripts/bench-cloud.sh

clean:
	rm -f bake
