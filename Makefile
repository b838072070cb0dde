# containers/image without C libraries: OpenPGP in Go, no cgo.
GO_TAGS     := containers_image_openpgp
export GOFLAGS := $(strip $(GOFLAGS) -tags=$(GO_TAGS))
export CGO_ENABLED := 0

GO          ?= go
BIN         := bin
TEST_FLAGS  ?= -count=1 -timeout 30m
BENCH_FLAGS ?= -benchtime 5x -benchmem -timeout 60m
# Extra flags for "make run", e.g. ARGS="--auth-file $$HOME/.docker/config.json -v=2".
ARGS        ?=
# No DWARF: links a second faster and the binary 30% smaller; panics still
# show stack traces. (No -trimpath: it would compile every package again,
# apart from what "go test" and "go vet" compile.)
LDFLAGS     ?= -s -w

.PHONY: all build run test test-unit verify update-codegen verify-codegen vet fmt bench clean

all: build

# hack/build.sh says what it builds and counts the packages it compiles.
build:
	@./hack/build.sh $(BIN) -ldflags="$(LDFLAGS)" ./cmd/tagger-apiserver ./cmd/kubectl-image

# Starts Tagger on this machine: embedded etcd and mirror registry under
# .tagger/, kubeconfig at .tagger/kubeconfig. Builds only the server (the
# plugin is "make build").
run:
	@./hack/build.sh $(BIN) -ldflags="$(LDFLAGS)" ./cmd/tagger-apiserver
	./$(BIN)/tagger-apiserver --local --local-dir .tagger $(ARGS)

# Everything CI checks: generated code, formatting, vet, all tests, the
# end-to-end suite included (TAGGER_E2E=skip leaves it out, and says so).
test: verify
	$(GO) test $(TEST_FLAGS) ./...
	@if [ "$${TAGGER_E2E:-}" = skip ]; then echo "NOTE: the end-to-end suite (test/e2e) did not run (TAGGER_E2E=skip): make test-e2e runs it"; fi

test-unit:
	$(GO) test -short ./...

verify: verify-codegen vet
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

update-codegen:
	./hack/update-codegen.sh

verify-codegen:
	./hack/verify-codegen.sh

fmt:
	gofmt -w $$(git ls-files '*.go')

bench:
	$(GO) test -run '^$$' -bench . $(BENCH_FLAGS) ./bench/...

clean:
	rm -rf $(BIN)

.PHONY: certs test-e2e

# Serving certificate and APIService caBundle for "kubectl apply -k artifacts/"
# (written to artifacts/certs/, git-ignored).
certs:
	./hack/gen-certs.sh

# Only the end-to-end suite: real etcd and kube-apiserver, built once into
# $$XDG_CACHE_HOME/tagger-e2e (or ~/.cache/tagger-e2e).
test-e2e:
	$(GO) test $(TEST_FLAGS) -v ./test/e2e/

.PHONY: image

# The server image without a container daemon (hack/image): a static linux
# tagger-apiserver on an empty base with this machine's CA certificates, user
# 65532, written as a docker-archive to bin/tagger-apiserver.tar; PUSH=1
# pushes it to IMAGE (credentials from ~/.docker/config.json). GOARCH=arm64
# builds for arm64.
IMAGE ?= quay.io/tagger/tagger-apiserver:0.1.0
image:
	GOOS=linux $(GO) build -ldflags="$(LDFLAGS)" -o $(BIN)/linux/tagger-apiserver ./cmd/tagger-apiserver
	$(GO) run ./hack/image --binary $(BIN)/linux/tagger-apiserver --arch $$($(GO) env GOARCH) --tag $(IMAGE) --out $(BIN)/tagger-apiserver.tar $(if $(PUSH),--push)
