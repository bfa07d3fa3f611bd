# pubmesh. `make run` starts a local cluster, `make test` runs every test.
# Both install what a fresh machine lacks (redis-server) first.

GO           ?= go
BIN          := bin/pubmesh
# pubmesh-dev: the same command with `dev` and `bench` built in (an etcd
# server and a plotting library that the production binary leaves out);
# bin/pubmesh runs it for those two commands.
DEVBIN       := bin/pubmesh-dev
DEVTAGS      := devtools
# The commit `pubmesh version` prints: set with -ldflags because a build
# may not record it itself (GOFLAGS=-buildvcs=false, a tarball without .git).
COMMIT       := $(shell c=$$(git rev-parse --short=12 HEAD 2>/dev/null) && { git diff --quiet HEAD 2>/dev/null && echo $$c || echo $$c-modified; } || echo unknown)
VERSION_PKG  := github.com/pubmesh/pubmesh/internal/version
# The whole suite stays well under this on 2 cores.
TEST_TIMEOUT ?= 9m

# Run apt-get as root, or through sudo when not root.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Fuzz targets as package:Func; `make test` runs each briefly, `make fuzz` longer.
FUZZ_TARGETS := ./ws:FuzzDecodeFrame ./ws:FuzzEncodeMessage ./fanout:FuzzEnvelope ./fanout:FuzzRespReader ./fanout:FuzzPosition ./discovery:FuzzDecodeNode ./internal/respguard:FuzzConn ./clusterconfig:FuzzParse
FUZZ_TIME    ?= 1m

.PHONY: all build run test deps vet fmt-check tidy-check fuzz bench chaos multihost dist

all: build

## build: compile the CLI into bin/pubmesh, and bin/pubmesh-dev (pubmesh dev and bench)
build:
	$(GO) build -ldflags "-X $(VERSION_PKG).Commit=$(COMMIT)" -o $(BIN) ./cmd/pubmesh
	$(GO) build -ldflags "-X $(VERSION_PKG).Commit=$(COMMIT)" -tags $(DEVTAGS) -o $(DEVBIN) ./cmd/pubmesh

## deps: install redis-server (Debian package) when it is not on PATH
deps:
	@if ! command -v redis-server >/dev/null 2>&1; then \
		echo "redis-server not found: installing it with apt-get"; \
		$(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y redis-server; \
	fi
	@redis-server --version
	@if ! command -v chromium >/dev/null 2>&1; then \
		echo "chromium not found: installing it with apt-get (the gateway's browser test)"; \
		$(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y chromium; \
	fi
	@if ! command -v systemd-analyze >/dev/null 2>&1; then \
		echo "systemd-analyze not found: installing systemd with apt-get (checks deploy/systemd)"; \
		$(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y systemd; \
	fi

## dist: static, versioned release binaries in dist/ (linux amd64 and arm64), with
## SHA256SUMS; `dist/pubmesh-VERSION-linux-amd64 version` prints what it is.
DIST_VERSION := $(shell sed -n 's/^const Version = "\(.*\)"/\1/p' internal/version/version.go)
dist:
	@rm -rf dist && mkdir -p dist
	@for arch in amd64 arm64; do \
		out=dist/pubmesh-$(DIST_VERSION)-linux-$$arch; \
		echo "building $$out"; \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath \
			-ldflags "-s -w -X $(VERSION_PKG).Commit=$(COMMIT)" \
			-o $$out ./cmd/pubmesh || exit 1; \
	done
	@cd dist && sha256sum pubmesh-* > SHA256SUMS && cat SHA256SUMS

## run: build, then run a local cluster (embedded etcd + 3 nodes); Ctrl-C stops it
run: build deps
	$(BIN) dev

## vet: go vet
vet:
	$(GO) vet ./...
	$(GO) vet -tags $(DEVTAGS) ./cmd/pubmesh

## fmt-check: fail if any file needs gofmt
fmt-check:
	@out="$$(gofmt -l .)"; \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

## tidy-check: fail if go.mod or go.sum is not as `go mod tidy` leaves it
## (direct dependencies marked // indirect, missing or unused entries)
tidy-check:
	@$(GO) mod tidy -diff >/dev/null || { echo "go.mod/go.sum need go mod tidy:"; $(GO) mod tidy -diff; exit 1; }

## test: vet, gofmt and go.mod checks, then every test with the race detector
test: deps vet fmt-check tidy-check
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...
	@$(MAKE) --no-print-directory fuzz FUZZ_TIME=10000x

## chaos: the fault and bad-input suite in full (~20 min as root; scenario 8 needs network
## namespaces): every scenario at length, 10 000 WebSocket connections, a 5-minute soak;
## writes the measured tables into docs/reliability.md. `make test` runs its short version.
chaos: deps
	PUBMESH_CHAOS=full PUBMESH_CHAOS_REPORT=$(CURDIR)/docs/reliability.md $(GO) test -v -count=1 -timeout 60m ./chaos

## multihost: the multi-host test in full (as root: 14 network namespaces as hosts, every
## component a process on its own host, TLS everywhere; a gateway restart, a drain and a
## host cut off under load). `make test` runs its short form; see multihost/doc.go.
multihost: deps
	PUBMESH_MULTIHOST=full $(GO) test -v -count=1 -timeout 20m ./multihost

## bench: pubmesh against plain Redis and Redis Cluster in one run (~3.5 min);
## writes bench/results/latest.{md,json,png}
bench: deps
	$(GO) run -tags $(DEVTAGS) ./cmd/pubmesh bench
	@echo "tracing off, unsampled and on, on the delivery path (docs/benchmarks.md, Tracing):"
	$(GO) test ./bench -run '^$$' -bench 'BenchmarkTracing' -benchtime 20000x -count 3 -benchmem | tee bench/results/tracing.txt

## fuzz: run every fuzz target for FUZZ_TIME (default 1m). make test runs 10000 inputs
## each (a few seconds): a count, not a duration, because with a duration go1.26's
## fuzz coordinator can fail at the deadline with a bare "context deadline exceeded"
## and no failing input (golang/go#75804, fixed in go1.27); that broke one CI run.
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "fuzz $$fn ($$pkg) for $(FUZZ_TIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZ_TIME) $$pkg || exit 1; \
	done
