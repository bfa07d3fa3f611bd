# pubmesh. `make run` starts a local cluster, `make test` runs every test.
# Both install what a fresh machine lacks (redis-server) first.

GO           ?= go
BIN          := bin/pubmesh
# The whole suite stays well under this on 2 cores.
TEST_TIMEOUT ?= 9m

# Run apt-get as root, or through sudo when not root.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all build run test deps vet fmt-check

all: build

## build: compile the CLI into bin/pubmesh
build:
	$(GO) build -o $(BIN) ./cmd/pubmesh

## deps: install redis-server (Debian package) when it is not on PATH
deps:
	@if ! command -v redis-server >/dev/null 2>&1; then \
		echo "redis-server not found: installing it with apt-get"; \
		$(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y redis-server; \
	fi
	@redis-server --version

## run: build, then run a local cluster (embedded etcd + 3 nodes); Ctrl-C stops it
run: build deps
	$(BIN) dev

## vet: go vet
vet:
	$(GO) vet ./...

## fmt-check: fail if any file needs gofmt
fmt-check:
	@out="$$(gofmt -l .)"; \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

## test: vet, gofmt check, then every test with the race detector
test: deps vet fmt-check
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...
