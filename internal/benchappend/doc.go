// Package benchappend holds the append throughput benchmarks: outbox.Append
// next to raw SQL of the same transaction shape (BenchmarkAppend), and
// Append with the read fence's events trigger next to the trigger before it
// (BenchmarkAppendReadFence), each pair measured in the same run. It has no
// code of its own; run them with
//
//	go test -run '^$' -bench . ./internal/benchappend/
package benchappend
