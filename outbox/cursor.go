package outbox

import (
	"cmp"
	"fmt"
	"strconv"
	"strings"
)

// Cursor is a point in the outbox's read order: the writing transaction's id
// and the event's position (its events.id). A checkpoint must hold both:
// resuming by position alone skips rows that a transaction with a smaller
// position committed late.
type Cursor struct {
	TxID     uint64
	Position int64
}

// Start is the cursor before every event.
var Start = Cursor{}

// Less reports whether c comes before o in read order.
func (c Cursor) Less(o Cursor) bool {
	if c.TxID != o.TxID {
		return c.TxID < o.TxID
	}
	return c.Position < o.Position
}

// Compare returns -1, 0 or +1 as c comes before, at or after o in read
// order.
func (c Cursor) Compare(o Cursor) int {
	if c.TxID != o.TxID {
		return cmp.Compare(c.TxID, o.TxID)
	}
	return cmp.Compare(c.Position, o.Position)
}

// String formats the cursor as "txid/position", the form ParseCursor reads.
func (c Cursor) String() string { return fmt.Sprintf("%d/%d", c.TxID, c.Position) }

// ParseCursor parses "txid/position".
func ParseCursor(s string) (Cursor, error) {
	tx, pos, ok := strings.Cut(s, "/")
	if !ok {
		return Cursor{}, fmt.Errorf("cursor %q: want TXID/POSITION", s)
	}
	t, err := strconv.ParseUint(tx, 10, 64)
	if err != nil {
		return Cursor{}, fmt.Errorf("cursor %q: bad txid: %w", s, err)
	}
	p, err := strconv.ParseInt(pos, 10, 64)
	if err != nil || p < 0 {
		return Cursor{}, fmt.Errorf("cursor %q: bad position", s)
	}
	return Cursor{TxID: t, Position: p}, nil
}
