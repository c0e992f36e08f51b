package projectorcli

import (
	"context"
	"crypto/subtle"
	"errors"
	"log/slog"
	"net/http"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"riverqueue.com/riverui"
)

const riverUICookie = "readside_riverui_token"

// mountRiverUI serves River's UI at /riverui/ behind a token: the
// Authorization header ("Bearer TOKEN"), or a cookie that /riverui/?token=TOKEN
// sets once, so that a browser can log in. Without a token it refuses to
// start: the UI can delete and retry jobs.
func mountRiverUI(ctx context.Context, mux *http.ServeMux, client *river.Client[pgx.Tx], token string, logger *slog.Logger) error {
	if len(token) < 16 {
		return errors.New("--riverui needs --riverui-token (env PROJECTOR_RIVERUI_TOKEN) of at least 16 characters")
	}
	h, err := riverui.NewHandler(&riverui.HandlerOpts{
		Endpoints: riverui.NewEndpoints(client, nil),
		Logger:    logger,
		Prefix:    "/riverui",
	})
	if err != nil {
		return err
	}
	if err := h.Start(ctx); err != nil {
		return err
	}
	mux.Handle("/riverui/", requireToken(token, h))
	return nil
}

func requireToken(token string, next http.Handler) http.Handler {
	ok := func(got string) bool { return subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1 }
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if q := r.URL.Query().Get("token"); q != "" && ok(q) {
			http.SetCookie(w, &http.Cookie{Name: riverUICookie, Value: token, Path: "/riverui/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
			u := *r.URL
			q := u.Query()
			q.Del("token")
			u.RawQuery = q.Encode()
			http.Redirect(w, r, u.String(), http.StatusSeeOther)
			return
		}
		if auth := r.Header.Get("Authorization"); len(auth) > 7 && auth[:7] == "Bearer " && ok(auth[7:]) {
			next.ServeHTTP(w, r)
			return
		}
		if c, err := r.Cookie(riverUICookie); err == nil && ok(c.Value) {
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="riverui"`)
		http.Error(w, "unauthorized: open /riverui/?token=... or send Authorization: Bearer ...", http.StatusUnauthorized)
	})
}
