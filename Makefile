# readside: run `make help` for the targets.
GO        ?= go
PKGS      ?= ./...
BENCHTIME ?= 1x
COUNT     ?= 1

.PHONY: help test lint bench bench-compare faults model mutants demo build

help: ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-12s %s\n", $$1, $$2}'

build: ## build the writer and projector binaries into bin/
	$(GO) build -buildvcs=auto -o bin/ ./cmd/...

test: ## run the test suite with the race detector (needs PostgreSQL binaries or a server; see README)
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

lint: ## gofmt, go vet and staticcheck
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1)
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)

bench: ## benchmarks, each next to a raw-SQL baseline measured in the same run (COUNT=3 to repeat)
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -count $(COUNT) -timeout 60m $(PKGS)

bench-compare: ## readside against River job-per-event and watermill-sql on one workload (separate module, ~11 min)
	cd bench && $(GO) run ./cmd/compare

faults: ## the long fault-injection run (kills, PostgreSQL restarts, SIGSTOP, bad events)
	READSIDE_FAULTS=long $(GO) test -count=1 -run TestFaults -v -timeout 60m ./internal/faults/

demo: ## the whole pipeline on a disposable PostgreSQL (or $$DATABASE_URL)
	$(GO) run ./cmd/projector demo

mutants: ## mutation check: each guard in scripts/mutants reverted in a temporary copy must fail the short model test or its regression tests (~10 min)
	$(GO) run ./scripts/mutants

model: ## the long model-based test: random histories against PostgreSQL and an in-memory model (READSIDE_MODEL=long)
	READSIDE_MODEL=long $(GO) test -count=1 -run 'TestModel' -v -timeout 60m ./internal/modeltest/
