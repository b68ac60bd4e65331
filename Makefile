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

.PHONY: all deps bake image test unit integration vm bench clean

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
test: deps bake
	go vet ./...
	go vet -tags integration ./...
	go vet -tags vm ./...
	go test -count=1 -timeout 10m ./...
	go test -count=1 -tags integration -timeout 30m -p 1 ./...
	mkdir -p $(BAKE_TEST_CACHE)
	go test -count=1 -tags vm -timeout 85m -p 1 -parallel 2 -v ./... 2>&1 | tee $(BAKE_TEST_CACHE)/vm-test.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|\s+\S+_test.go)'; exit $${PIPESTATUS[0]}

unit:
	go test ./...

bench: deps bake
	bash scripts/install-deps.sh --bench
	bash scripts/bench.sh
	bash scripts/bench-cloud.sh

clean:
	rm -f bake
