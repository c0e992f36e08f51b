package dbschema

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Pipeline is a whole transaction sent in one round trip (CommitBatch).
// Read readside's statements' results (b's) from Results, then Commit
// reads the rest; End ends it.
type Pipeline struct {
	res  *pinnedResults
	c    *pgxpool.Conn
	q    []string // the projection's statements
	read bool     // Commit read the COMMIT's result
}

// preparedKey holds, in a connection's CustomData, the statements
// CommitBatch prepared on it under a projection's search_path: their text
// and the name they were prepared under.
const preparedKey = "readside/dbschema.prepared"

// MaxPrepared bounds the statements CommitBatch keeps prepared on one
// connection: a projection whose queued SQL varies with its batch (a
// VALUES list as long as the batch) would otherwise prepare without end.
// Past it CommitBatch deallocates them all and starts again.
const MaxPrepared = 128

// CommitBatch sends a whole transaction on c in one round trip: BEGIN,
// readside's search_path with settings, b's statements (in n), the
// search_path of a projection's code (Projection's, with no schema before
// readside's), q's statements as they are (the projection's own SQL), and
// the COMMIT. q's statements must be plain SQL and arguments (no
// pgx.QueryRewriter such as pgx.NamedArgs: Pipelineable). A statement that
// fails ends it: the server skips everything
// after it up to the end of the pipeline, the COMMIT included, and End
// rolls the transaction back. So a statement of b that must hold for q's
// to commit fails rather than match no row.
//
// prepare says that pgx describes, in a round trip before the pipeline, a
// statement new to the connection (QueryExecModeCacheStatement): that
// would resolve q's names under the session's search_path, not the
// projection's. CommitBatch then first prepares those of q's statements
// that it has not prepared on c before, in a transaction of their own
// under the projection's search_path, where a named prepared statement is
// planned and replanned (PostgreSQL replans one whose search_path
// changed). They are named for readside alone (readside_q_ and a digest),
// and the pipeline names them so: the projection's own statements of the
// same text stay in pgx's statement cache, which recovers from a changed
// table by itself.
//
// Read b's results from Results, then call Commit, then End. c is given
// back to its pool by End.
func (n Name) CommitBatch(ctx context.Context, c *pgxpool.Conn, b, q *pgx.Batch, prepare bool, settings ...Setting) (*Pipeline, error) {
	sqls := make([]string, len(q.QueuedQueries))
	for i, qq := range q.QueuedQueries {
		sqls[i] = qq.SQL
	}
	queued := q.QueuedQueries
	if prepare {
		names, err := n.prepareProjection(ctx, c, sqls)
		if err != nil {
			forgetPrepared(ctx, c.Conn(), sqls)
			return nil, err
		}
		queued = make([]*pgx.QueuedQuery, len(q.QueuedQueries))
		for i, qq := range q.QueuedQueries {
			queued[i] = &pgx.QueuedQuery{SQL: names[i], Arguments: qq.Arguments}
		}
	}
	nb := &pgx.Batch{}
	nb.Queue("begin")
	pin, args := pinWith(n.StrictPath(), settings)
	nb.Queue(pin, args...)
	nb.QueuedQueries = append(nb.QueuedQueries, n.batch(b).QueuedQueries...)
	sql, args := projectionSetting(c.Conn(), n, "")
	nb.Queue(sql, args...)
	nb.QueuedQueries = append(nb.QueuedQueries, queued...)
	nb.Queue("commit")
	br := c.SendBatch(ctx, nb)
	return &Pipeline{res: &pinnedResults{BatchResults: br, extra: 1}, c: c, q: sqls}, nil
}

// Results are b's results (ReadBegin first).
func (p *Pipeline) Results() pgx.BatchResults { return p.res }

// Commit reads the results after b's: the projection's search_path, q's
// statements' and the COMMIT's. It returns the first error, from q's
// statements labelled with their place in q.
func (p *Pipeline) Commit() error {
	err := readProjectionSetting(p.c.Conn(), p.res.QueryRow())
	for i := 0; err == nil && i < len(p.q); i++ {
		if _, err = p.res.Exec(); err != nil {
			err = fmt.Errorf("queued statement %d: %w", i+1, err)
		}
	}
	if err == nil {
		var tag string
		t, cerr := p.res.Exec()
		tag, err = t.String(), cerr
		if err == nil && tag != "COMMIT" {
			err = fmt.Errorf("commit: %s", tag)
		}
		p.read = err == nil
	}
	return err
}

// End closes the results, rolls back a transaction that did not commit
// and gives the connection back. When the pipeline failed it also forgets
// the statements CommitBatch prepared for q on the connection, so that the
// next one prepares them again: one dropped behind pgx's back (a
// DEALLOCATE in a projection's code), or planned for a table since
// altered, does not fail every batch.
func (p *Pipeline) End(ctx context.Context) error {
	err := p.res.Close()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	conn := p.c.Conn()
	if !conn.IsClosed() && conn.PgConn().TxStatus() != 'I' {
		// A transaction the pipeline left open or failed: the pool would
		// close the connection rather than reuse it.
		_, _ = conn.Exec(ctx, "rollback")
	}
	if !p.read && !conn.IsClosed() {
		forgetPrepared(ctx, conn, p.q)
	}
	p.c.Release()
	if p.read {
		return nil
	}
	return err
}

// Pipelineable reports whether q's statements can go in CommitBatch's
// pipeline: plain SQL with its arguments, no pgx.QueryRewriter (such as
// pgx.NamedArgs, which pgx rewrites as it sends them).
func Pipelineable(q *pgx.Batch) bool {
	for _, qq := range q.QueuedQueries {
		if len(qq.Arguments) > 0 {
			if _, ok := qq.Arguments[0].(pgx.QueryRewriter); ok {
				return false
			}
		}
		if qq.Fn != nil {
			return false
		}
	}
	return true
}

// preparedName is the name CommitBatch prepares sql under.
func preparedName(sql string) string {
	d := sha256.Sum256([]byte(sql))
	return "readside_q_" + hex.EncodeToString(d[:16])
}

// prepareProjection prepares, on c, those of sqls not prepared there
// before, under the search_path of a projection's code, and returns the
// names they are prepared under.
func (n Name) prepareProjection(ctx context.Context, c *pgxpool.Conn, sqls []string) ([]string, error) {
	conn := c.Conn()
	done, _ := conn.PgConn().CustomData()[preparedKey].(map[string]string)
	names := make([]string, len(sqls))
	for i, sql := range sqls {
		names[i] = preparedName(sql)
	}
	cold := func() (cold []string) {
		for _, sql := range sqls {
			if _, ok := done[sql]; !ok && !slices.Contains(cold, sql) {
				cold = append(cold, sql)
			}
		}
		return cold
	}()
	if len(cold) == 0 {
		return names, nil
	}
	if len(done)+len(cold) > MaxPrepared {
		// All of them again, the batch's own among them.
		forgetPrepared(ctx, conn, slices.Collect(maps.Keys(done)))
		cold = slices.Compact(slices.Sorted(slices.Values(sqls)))
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	sql, args := projectionSetting(conn, n, "")
	if err := readProjectionSetting(conn, tx.QueryRow(ctx, sql, args...)); err != nil {
		return nil, err
	}
	if done == nil {
		done = map[string]string{}
		conn.PgConn().CustomData()[preparedKey] = done
	}
	for _, sql := range cold {
		// pgx keeps a named statement apart from its statement cache
		// (never evicted) and uses it for a queued statement that names
		// it.
		name := preparedName(sql)
		if _, err := conn.Prepare(ctx, name, sql); err != nil {
			return nil, err
		}
		done[sql] = name
	}
	return names, tx.Commit(ctx)
}

// forgetPrepared deallocates, on conn, those of sqls that
// prepareProjection prepared there.
func forgetPrepared(ctx context.Context, conn *pgx.Conn, sqls []string) {
	done, _ := conn.PgConn().CustomData()[preparedKey].(map[string]string)
	for _, sql := range sqls {
		if name, ok := done[sql]; ok {
			delete(done, sql)
			_ = conn.Deallocate(ctx, name)
		}
	}
}
