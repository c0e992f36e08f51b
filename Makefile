# readside: run `make help` for the targets.
GO        ?= go
PKGS      ?= ./...
BENCHTIME ?= 1x

.PHONY: help test test-short lint bench demo build

help: ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-12s %s\n", $$1, $$2}'

build: ## build the writer and projector binaries into bin/
	$(GO) build -o bin/ ./cmd/...

test: ## run the test suite with the race detector (needs PostgreSQL binaries or a server; see README)
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

lint: ## gofmt, go vet and staticcheck
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1)
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@2025.1.1 $(PKGS)

bench: ## benchmarks: throughput and latency against raw-SQL baselines measured in the same run
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -count 3 -timeout 60m $(PKGS)

demo: ## the whole pipeline on a disposable PostgreSQL (or $$DATABASE_URL)
	$(GO) run ./cmd/projector demo
