// Package readside keeps read models up to date behind an event-sourced
// writer on PostgreSQL: a writer appends events (outbox.Append, or a plain
// INSERT through the SQL contract, or an application's own table that
// `projector adopt` attaches to), and a fleet of members applies them to
// projections in ordered, checkpointed batches.
//
// Client is readside in a Go program, as river.Client is River:
//
//	client, err := readside.NewClient(readside.Config{
//		Pool:        pool,
//		Projections: []projectors.Projection{myProjection{}},
//	})
//	if _, err := client.Migrate(ctx); err != nil { ... }  // schema readside, idempotent
//	if err := client.Start(ctx); err != nil { ... }       // a fleet member
//	defer client.Stop(context.Background())
//
//	job, err := client.Reset(ctx, "my_projection", readside.ResetToStart())
//	err = client.Wait(ctx, job, nil)                      // until replayed
//
// Everything readside creates lives in one schema (Config.Schema,
// "readside" by default); its statements never depend on the connection's
// search_path. Projections are written against package projectors;
// projectortest checks them; projectorcli gives a binary carrying them the
// whole `projector` command line, built on Client.
package readside
