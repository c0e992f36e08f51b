// Package pgtemp starts a disposable PostgreSQL cluster from the server
// binaries (initdb, pg_ctl) in a temporary directory. It is what the tests
// and the demo fall back to when no server is named or reachable.
package pgtemp

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Cluster is a running disposable cluster. Stop removes it.
type Cluster struct {
	dir  string
	bin  string
	cred *syscall.Credential
	// URL connects to the postgres database as the superuser, over the
	// cluster's Unix socket.
	URL string
}

// BinDir finds the PostgreSQL server binaries: $PG_BINDIR, pg_config
// --bindir, or the newest /usr/lib/postgresql/*/bin.
func BinDir() (string, error) {
	if d := os.Getenv("PG_BINDIR"); d != "" {
		return d, nil
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		d := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Slice(matches, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(matches[i]))))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(matches[j]))))
		return vi > vj
	})
	if len(matches) > 0 {
		return filepath.Dir(matches[0]), nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("pgtemp: no PostgreSQL server binaries found (install postgresql, or set PG_BINDIR)")
}

// Start initialises and starts a cluster listening only on a Unix socket in
// a fresh temporary directory. As root it runs the server as the "postgres"
// (or "nobody") user, since PostgreSQL refuses to run as root.
func Start(ctx context.Context) (*Cluster, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "readside-pg-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{dir: dir, bin: bin}
	if os.Geteuid() == 0 {
		cred, err := unprivileged()
		if err != nil {
			_ = os.RemoveAll(dir)
			return nil, err
		}
		c.cred = cred
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			_ = os.RemoveAll(dir)
			return nil, err
		}
	}
	data := filepath.Join(dir, "data")
	if out, err := c.cmd(ctx, "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C").CombinedOutput(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtemp: initdb: %w: %s", err, out)
	}
	opts := fmt.Sprintf("-c listen_addresses='' -c unix_socket_directories=%s -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 -c shared_buffers=128MB", dir)
	if out, err := c.cmd(ctx, "pg_ctl", "-D", data, "-l", filepath.Join(dir, "log"), "-o", opts, "-w", "-t", "60", "start").CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "log"))
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtemp: pg_ctl start: %w: %s %s", err, out, log)
	}
	c.URL = "postgres://postgres@/postgres?host=" + url.QueryEscape(dir) + "&sslmode=disable"
	return c, nil
}

// Dir is the cluster's directory (data, socket and log).
func (c *Cluster) Dir() string { return c.dir }

// Restart stops the server with a fast shutdown and starts it again, for
// tests of recovery from a database restart.
func (c *Cluster) Restart(ctx context.Context) error {
	data := filepath.Join(c.dir, "data")
	// -l: the restarted server must not inherit our output pipe, or
	// CombinedOutput would wait for it forever.
	if out, err := c.cmd(ctx, "pg_ctl", "-D", data, "-l", filepath.Join(c.dir, "log"), "-m", "fast", "-w", "restart").CombinedOutput(); err != nil {
		return fmt.Errorf("pgtemp: restart: %w: %s", err, out)
	}
	return nil
}

// Stop shuts the server down immediately and removes its directory.
func (c *Cluster) Stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := c.cmd(ctx, "pg_ctl", "-D", filepath.Join(c.dir, "data"), "-m", "immediate", "-w", "stop").CombinedOutput()
	rmErr := os.RemoveAll(c.dir)
	if err != nil {
		return fmt.Errorf("pgtemp: stop: %w: %s", err, out)
	}
	return rmErr
}

func (c *Cluster) cmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, name), args...)
	cmd.Dir = c.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.WaitDelay = 10 * time.Second
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	return cmd
}

// RunAs is the credential a server that refuses root runs with (PostgreSQL
// here, PgBouncer in tests): nil unless this process is root, else the
// "postgres" (or "nobody") user's.
func RunAs() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	return unprivileged()
}

func unprivileged() (*syscall.Credential, error) {
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	return nil, errors.New("pgtemp: running as root and no unprivileged user (postgres, nobody) to run the server as")
}
