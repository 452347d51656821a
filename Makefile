# obol: `make demo` and `make test` do all set-up on a fresh Debian 12 as root.
SHELL := /bin/bash
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
export PATH := $(dir $(GO)):$(PATH)
BIN := bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/obol-ipsec/obol/internal/daemon.Version=$(VERSION)

# Debian packages the lab and the tests use (real charon, knot, unbound).
DEB_PKGS := charon-systemd strongswan-swanctl strongswan-pki libcharon-extra-plugins \
	libstrongswan-extra-plugins knot knot-dnsutils unbound iproute2 tcpdump \
	dnsutils iputils-ping netcat-openbsd gcc binutils valgrind \
	qemu-system-x86 debootstrap e2fsprogs

.PHONY: all build plugins proto ctoken deps test unit e2e kernelesp demo bench fuzz vet clean check-clean

all: build

# deps installs what is missing, and only that (apt-get update once if needed).
deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "make: these packages are missing and need root to install: $$missing" >&2; exit 1; fi; \
		echo "installing: $$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@test -x "$(GO)" || { echo "make: no Go toolchain found (looked for go in PATH and /usr/local/go/bin); install Go 1.26" >&2; exit 1; }
	@$(GO) mod download

build: ctoken plugins
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/obold ./cmd/obold
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/obolctl ./cmd/obolctl
	$(GO) build -o $(BIN)/tokenserver ./examples/tokenserver

# plugins builds the module plugin binaries: obol-module (obol's own
# modules out of process) and the example auth-method plugin corpkeys.
plugins:
	$(GO) build -o $(BIN)/obol-module ./cmd/obol-module
	$(GO) build -o $(BIN)/corpkeys ./examples/plugins/corpkeys

# proto regenerates the go-plugin gRPC code (committed; run after editing
# plugins/proto). protoc comes from Debian's protobuf-compiler.
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
proto:
	@command -v protoc >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq protobuf-compiler >/dev/null; }
	GOBIN=$(CURDIR)/$(BIN)/tools $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go
	GOBIN=$(CURDIR)/$(BIN)/tools $(GO) install $(PROTOC_GEN_GO_GRPC)
	cd plugins && PATH=$(CURDIR)/$(BIN)/tools:$$PATH protoc -I proto --go_out=. --go_opt=module=github.com/obol-ipsec/obol/plugins \
		--go-grpc_out=. --go-grpc_opt=module=github.com/obol-ipsec/obol/plugins obol/plugins/v1/modules.proto

# ctoken: the C client library of the token API (libc only) and its example.
CTOKEN_CFLAGS ?= -Wall -Wextra -Werror -std=c11 -D_GNU_SOURCE -O2
ctoken: $(BIN)/libipsec_token.a $(BIN)/example_server_c

$(BIN)/libipsec_token.a: tokenapi/c/ipsec_token.c tokenapi/c/ipsec_token.h
	@mkdir -p $(BIN)
	gcc $(CTOKEN_CFLAGS) -c tokenapi/c/ipsec_token.c -o $(BIN)/ipsec_token.o
	ar rcs $@ $(BIN)/ipsec_token.o

$(BIN)/example_server_c: tokenapi/c/example_server.c tokenapi/c/ipsec_token.h $(BIN)/libipsec_token.a
	gcc $(CTOKEN_CFLAGS) -I tokenapi/c tokenapi/c/example_server.c $(BIN)/libipsec_token.a -o $@

vet:
	$(GO) vet ./...

# test runs everything: unit tests, real-charon integration tests, the
# end-to-end lab tests (root: network namespaces) and, on its own so it does
# not starve the timing-sensitive lab tests of the 2 cores, the C client's
# tests under valgrind and the kernel-ESP test under qemu. Nothing is skipped.
test: deps build vet
	@[ "$$(id -u)" = 0 ] || { echo "make test: the e2e tests need root (network namespaces, charon)" >&2; exit 1; }
	OBOL_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -p 2 -timeout 20m $$($(GO) list ./... | grep -v -e /e2e/kernelesp -e /tokenapi/c/ctest)
	$(GO) test -count=1 -p 1 -timeout 20m ./tokenapi/c/ctest ./e2e/kernelesp
	@$(MAKE) --no-print-directory check-clean

# kernelesp runs only the qemu test: obold where charon installs kernel ESP SAs.
kernelesp: deps
	$(GO) test -count=1 -v -timeout 20m -run TestKernelESP ./e2e/kernelesp

unit:
	$(GO) test -count=1 ./internal/... ./plugins/... ./cmd/...

e2e: deps build
	OBOL_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -v -timeout 20m ./e2e/...

# check-clean fails if a test left a namespace or one of our daemons behind.
check-clean:
	@left=$$(ip netns list 2>/dev/null | grep -E '^obl[a-z0-9]{5}-' || true); \
	procs=$$(for p in charon-systemd knotd unbound obold qemu-system-x86; do pgrep -a -x $$p; done || true); \
	if [ -n "$$left$$procs" ]; then echo "left behind:"; echo "$$left"; echo "$$procs"; exit 1; fi; \
	echo "clean: no lab namespace, charon, knot, unbound, obold or qemu left"

demo: deps build
	@[ "$$(id -u)" = 0 ] || { echo "make demo: needs root (network namespaces, charon)" >&2; exit 1; }
	OBOL_BIN=$(CURDIR)/$(BIN) $(GO) run ./e2e/demo

# bench: BenchmarkTokenQuery alone takes 3-5 minutes (10,000 real SAs).
bench: deps
	$(GO) test -run '^$$' -bench . -benchmem -timeout 30m ./...

FUZZTIME ?= 10s
fuzz:
	@$(GO) list -f '{{.ImportPath}} {{.Dir}}' ./... | while read pkg dir; do \
		for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/func //'); do \
			echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; done

clean:
	rm -rf $(BIN)
