package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func runCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), args, &out, &errOut)
	return out.String() + errOut.String(), err
}

func TestDemoOnGivenDatabase(t *testing.T) {
	t.Parallel()
	url := pgtest.NewEmptyDatabaseURL(t)
	out, err := runCmd(t, "demo", "--database-url", url, "--events", "600", "--workers", "2")
	require.NoError(t, err, out)
	require.Contains(t, out, "every projection caught up")
	require.Contains(t, out, "order_statistics equals an aggregation over the events table")
}

// The shipped binary carries the shipped projections and demo.
func TestShippedBinary(t *testing.T) {
	t.Parallel()
	out, err := runCmd(t, "-h")
	require.NoError(t, err)
	for _, want := range []string{"demo", "order_summary", "order_notifications", "reset", "dead-letters", "completion", "version"} {
		require.Contains(t, out, want)
	}
	_, err = runCmd(t, "run", "--projections", "nope", "--database-url", "postgres://nobody@127.0.0.1:1/none?connect_timeout=1")
	require.ErrorContains(t, err, `unknown projection "nope"`)
}
