// Package benchappend holds the append throughput benchmark: outbox.Append
// next to raw SQL of the same transaction shape, measured in the same run.
// It has no code of its own; run it with
//
//	go test -run '^$' -bench . ./internal/benchappend/
package benchappend
