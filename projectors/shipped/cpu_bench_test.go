package shipped_test

import (
	"context"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// cpuClock reads the CPU time spent so far by this process and by the
// PostgreSQL server the pool talks to, when that server runs on this
// machine and its processes are readable (/proc): the postmaster's own
// and reaped children's time plus every live backend's. Figures of CPU
// per event do not depend on how busy the machine is, as wall-clock
// rates do; they are only meaningful when nothing else uses the server
// (a cluster of its own, see READSIDE_BENCH_BACKLOG_URL).
type cpuClock struct {
	postmaster int
}

// newCPUClock finds the server's postmaster through a backend's parent.
// It returns a clock with postmaster 0 (client CPU only) when the server
// is not local.
func newCPUClock(tb testing.TB, pool *pgxpool.Pool) cpuClock {
	tb.Helper()
	var pid int
	if err := pool.QueryRow(context.Background(), `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		tb.Fatal(err)
	}
	f, ok := procStat(pid)
	if !ok {
		return cpuClock{}
	}
	ppid, _ := strconv.Atoi(f[1])
	return cpuClock{postmaster: ppid}
}

// read returns the client's (this process and its children that ended:
// the projector binary) and the server's CPU time so far.
func (c cpuClock) read() (client, server time.Duration) {
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		if err := syscall.Getrusage(who, &ru); err == nil {
			client += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}
	if c.postmaster == 0 {
		return client, 0
	}
	const tick = 10 * time.Millisecond // USER_HZ 100 on Linux
	sum := func(f []string, from, to int) (t time.Duration) {
		for i := from; i <= to; i++ {
			v, _ := strconv.ParseInt(f[i], 10, 64)
			t += time.Duration(v) * tick
		}
		return t
	}
	if f, ok := procStat(c.postmaster); ok {
		server += sum(f, 11, 14) // utime, stime, cutime, cstime
	}
	entries, _ := os.ReadDir("/proc")
	pm := strconv.Itoa(c.postmaster)
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f, ok := procStat(pid); ok && f[1] == pm {
			server += sum(f, 11, 14)
		}
	}
	return client, server
}

// procStat returns the fields of /proc/pid/stat after the command name
// (state first, so ppid is [1] and utime [11]).
func procStat(pid int) ([]string, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, false
	}
	f := strings.Fields(s[i+1:])
	return f, len(f) > 14
}

// cpuSpent is what one drain cost.
type cpuSpent struct {
	wall, client, server time.Duration
}

func (s *cpuSpent) add(o cpuSpent) {
	s.wall += o.wall
	s.client += o.client
	s.server += o.server
}

// measure runs drain and returns its wall time and CPU time spent by this
// process and the server meanwhile.
func (c cpuClock) measure(drain func() time.Duration) cpuSpent {
	c0, s0 := c.read()
	wall := drain()
	c1, s1 := c.read()
	return cpuSpent{wall: wall, client: c1 - c0, server: s1 - s0}
}
