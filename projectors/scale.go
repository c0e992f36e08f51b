package projectors

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/readside/readside/internal/checkpoint"
	"github.com/readside/readside/outbox"
)

// claimedSplits reads how each claimed segment is split (its projection's
// segment count, which a scale changes, and up to where a scale's bucket
// floors matter), after the claim: a scale committed before the claim is
// seen, one committed after it has fenced the claim.
func claimedSplits(ctx context.Context, db checkpoint.DB, claimed []checkpoint.Checkpoint) (map[checkpoint.Segment]checkpoint.Split, error) {
	segs := make([]checkpoint.Segment, len(claimed))
	for i, c := range claimed {
		segs[i] = checkpoint.Segment{Projection: c.Projection, Segment: c.Segment}
	}
	return checkpoint.Splits(ctx, db, segs)
}

// belowFloors returns the events of a batch that may lie at or below the
// floor or the high of their bucket left by a scale (all of them while the
// batch starts at or below s.floorsUntil; none after).
func (s *segment) belowFloors(events []outbox.Event) []outbox.Event {
	if s.schema != "" || len(events) == 0 || s.floorsUntil.Less(events[0].Cursor) {
		return nil
	}
	n := 0
	for n < len(events) && !s.floorsUntil.Less(events[n].Cursor) {
		n++
	}
	return events[:n]
}

// queueFloors queues checkpoint.QueueFloors for the events below the
// floors, if any, and returns whether it did.
func queueFloors(b *pgx.Batch, s *segment, events []outbox.Event) bool {
	below := s.belowFloors(events)
	if len(below) == 0 {
		return false
	}
	checkpoint.QueueFloors(b, s.lease.Projection, below)
	return true
}

// replayed says whether e was applied once before, side effects included:
// at or below the segment's high-water mark, or its bucket's high.
func (s *segment) replayed(e outbox.Event) bool {
	return !s.high.Less(e.Cursor) || s.replays[e.ID()]
}

// replayFirst puts the events applied once before (replayed) first and
// returns how many they are. Below a scale's bucket highs they need not be
// a prefix; an aggregate's events all lie in one bucket, so its replayed
// ones still come before the rest and its order holds.
func (s *segment) replayFirst(events []outbox.Event) ([]outbox.Event, int) {
	split := len(events)
	for i, e := range events {
		if !s.replayed(e) {
			split = i
			break
		}
	}
	if len(s.replays) == 0 {
		return events, split // sorted: the replayed ones are a prefix
	}
	out := make([]outbox.Event, 0, len(events))
	var fresh []outbox.Event
	for _, e := range events {
		if s.replayed(e) {
			out = append(out, e)
		} else {
			fresh = append(fresh, e)
		}
	}
	return append(out, fresh...), len(events) - len(fresh)
}
