package outbox

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgxlisten"
)

// Listen holds a dedicated connection LISTENing on Channel and calls notify
// (which must not block) on every notification, and once after each
// (re)connect, since notifications sent while disconnected are lost. It
// reconnects after reconnectDelay on failure and returns when ctx is done.
func Listen(ctx context.Context, connect func(ctx context.Context) (*pgx.Conn, error), reconnectDelay time.Duration, notify func(), onError func(error)) {
	l := &pgxlisten.Listener{
		Connect:        connect,
		ReconnectDelay: reconnectDelay,
		LogError: func(_ context.Context, err error) {
			if onError != nil && ctx.Err() == nil {
				onError(err)
			}
		},
	}
	l.Handle(Channel, handler(notify))
	_ = l.Listen(ctx)
}

// handler calls notify on every notification and on every (re)connect
// (HandleBacklog), when notifications may have been missed.
type handler func()

func (h handler) HandleNotification(context.Context, *pgconn.Notification, *pgx.Conn) error {
	h()
	return nil
}

func (h handler) HandleBacklog(context.Context, string, *pgx.Conn) error {
	h()
	return nil
}
