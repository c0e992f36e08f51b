package benchappend_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/readside/readside/internal/pgtest"
	"github.com/readside/readside/migrations"
	"github.com/readside/readside/outbox"
)

// withoutFence turns a migrated database's events trigger back into the
// one before the read fence (migration 007's, which registers nothing and
// reads no fence), so that the two can be measured side by side.
func withoutFence(b *testing.B, pool *pgxpool.Pool) {
	b.Helper()
	var sql string
	for _, m := range migrations.All() {
		if m.Name == "sql_contract" {
			sql = m.SQL
		}
	}
	start := strings.Index(sql, "CREATE OR REPLACE FUNCTION readside_events_to_outbox()")
	end := strings.Index(sql[start:], "\n$$;\n")
	if start < 0 || end < 0 {
		b.Fatal("migration 007's events trigger not found")
	}
	// Run as migrations run: unqualified, in readside's schema.
	err := pgx.BeginFunc(context.Background(), pool, func(tx pgx.Tx) error {
		ctx := context.Background()
		if _, err := tx.Exec(ctx, `SELECT pg_catalog.set_config('search_path', 'readside', true)`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, sql[start:start+end+len("\n$$;\n")]); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `ALTER FUNCTION readside_events_to_outbox() SET search_path = pg_catalog, readside, pg_temp`)
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
}

// BenchmarkAppendReadFence measures outbox.Append on two databases of the
// same server in the same run, one with the events trigger of migration
// 012 (registration and fence) and one with the trigger before it, in
// alternating rounds so that the machine's load weighs on both alike.
// While it runs, a reader on each database reads the head of the log every
// 5 ms (a busy fleet: it advances the fence and copies pg_locks).
// fence/base is the ratio of their append rates.
func BenchmarkAppendReadFence(b *testing.B) {
	fenceURL, baseURL := pgtest.NewDatabaseURL(b), pgtest.NewDatabaseURL(b)
	fence, base := pgtest.Pool(b, fenceURL), pgtest.Pool(b, baseURL)
	withoutFence(b, base)
	ctx, cancel := context.WithCancel(context.Background())
	var readers sync.WaitGroup
	defer readers.Wait()
	defer cancel()
	for _, u := range []string{fenceURL, baseURL} {
		pool := pgtest.Pool(b, u+"&application_name="+benchReader)
		readers.Go(func() {
			tick := time.NewTicker(5 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
					_, _ = outbox.ReadHead(ctx, pool)
				}
			}
		})
	}
	for _, shape := range []struct {
		name    string
		perTx   int
		writers int
	}{
		{"1_event_per_tx_8_writers", 1, 8},
		{"100_events_per_tx_1_writer", 100, 1},
	} {
		b.Run(shape.name, func(b *testing.B) {
			prefix := fmt.Sprintf("%s-%d-", shape.name, runs.Add(1))
			var fenced, unfenced []*writer
			for i := range shape.writers {
				fenced = append(fenced, newWriter(fence, fmt.Sprintf("%sfence-%d", prefix, i), shape.perTx))
				unfenced = append(unfenced, newWriter(base, fmt.Sprintf("%sbase-%d", prefix, i), shape.perTx))
			}
			for _, ws := range [][]*writer{fenced, unfenced} {
				for _, w := range ws {
					if err := w.appendTx(ctx); err != nil { // connections open before the clock starts
						b.Fatal(err)
					}
				}
			}
			var cpuFence, cpuBase time.Duration
			run := func(ws []*writer, n int) time.Duration {
				cpu := &cpuBase
				if ws[0].pool == fence {
					cpu = &cpuFence
				}
				*cpu -= backendCPU(b, ws[0].pool)
				defer func() { *cpu += backendCPU(b, ws[0].pool) }()
				start := time.Now()
				var wg sync.WaitGroup
				for i, w := range ws {
					share := n / len(ws)
					if i < n%len(ws) {
						share++
					}
					wg.Go(func() {
						for range share {
							if err := w.appendTx(ctx); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				return time.Since(start)
			}
			const rounds = 8
			var tFence, tBase time.Duration
			b.ResetTimer()
			for r := range rounds {
				n := b.N / rounds
				if r < b.N%rounds {
					n++
				}
				if n == 0 {
					continue
				}
				if r%2 == 0 {
					tFence += run(fenced, n)
					tBase += run(unfenced, n)
				} else {
					tBase += run(unfenced, n)
					tFence += run(fenced, n)
				}
			}
			b.StopTimer()
			events := float64(b.N * shape.perTx)
			b.ReportMetric(events/tFence.Seconds(), "fence_events/s")
			b.ReportMetric(events/tBase.Seconds(), "base_events/s")
			b.ReportMetric(tBase.Seconds()/tFence.Seconds(), "fence/base")
			b.ReportMetric(float64(cpuFence.Microseconds())/float64(b.N), "fence_server_cpu_us/tx")
			b.ReportMetric(float64(cpuBase.Microseconds())/float64(b.N), "base_server_cpu_us/tx")
			b.ReportMetric(float64(tFence.Nanoseconds())/float64(b.N), "ns/op")
		})
	}
}

// benchReader is the application_name of the readers' connections, whose
// server CPU backendCPU leaves out.
const benchReader = "bench_reader"

// backendCPU is the CPU time (user and system) the server processes of
// pool's database have used so far, the readers' left out. It reads /proc, so the server must run on this machine;
// elsewhere it returns 0. Server CPU varies far less than wall time with
// the machine's load, which is what a 5% difference on a shared machine
// needs.
func backendCPU(b *testing.B, pool *pgxpool.Pool) time.Duration {
	b.Helper()
	rows, err := pool.Query(context.Background(), `SELECT pid FROM pg_stat_activity
		WHERE datname = current_database() AND application_name <> $1`, benchReader)
	if err != nil {
		b.Fatal(err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		b.Fatal(err)
	}
	var ticks int64
	for _, pid := range pids {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0
		}
		// Fields after "(comm)": state is the 1st, utime the 12th, stime the 13th.
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + st
	}
	return time.Duration(ticks) * 10 * time.Millisecond // USER_HZ 100
}
