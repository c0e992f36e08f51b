// Package checkpoint writes readside's checkpoints (the public package
// checkpoint is their data model): per (projection, segment), the read
// cursor, the lease that says which worker may advance it, and the
// operator's controls (pause, resume, reset).
//
// Fencing: every apply transaction starts with Advance, which moves the
// cursor only if the caller's lease (owner and epoch) is still current and
// unexpired and the cursor is where the caller read from. The UPDATE takes
// the checkpoint's row lock, so no other worker can claim the segment until
// the transaction ends; a worker that lost its lease commits nothing.
package checkpoint
