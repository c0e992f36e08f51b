// Package control is readside's control plane, beside the runtime in
// package projectors: operations on a projection that run as durable River
// jobs on Queue, executed by whichever fleet member carries the projection
// (Control), and inserted and followed by the CLI (Jobs).
//
//   - reset (ResetArgs, MoveCheckpoints): move every checkpoint of a
//     projection, emptying its read model first for a reset to the start;
//   - rebuild (RebuildArgs, StartRebuild): build a copy of the read model
//     in its own schema, from the start, then switch it in within one
//     transaction once it has caught up;
//   - dead-letter retry (RetryDeadLettersArgs, RetryDeadLetters);
//   - outbox pruning (PruneOutboxArgs, PruneOutbox), periodic;
//   - Repair, run directly: re-apply some aggregates' events.
//
// Every one of them takes the projection's checkpoint locks through package
// checkpoint, so batches in flight finish first and later ones wait or are
// fenced.
package control
