package projectorcli

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRiverUIRequiresToken(t *testing.T) {
	t.Parallel()
	const token = "0123456789abcdef-secret"
	h := requireToken(token, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) }))
	do := func(r *http.Request) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		return rec
	}
	require.Equal(t, http.StatusUnauthorized, do(httptest.NewRequest("GET", "/riverui/", nil)).Code)
	bad := httptest.NewRequest("GET", "/riverui/", nil)
	bad.Header.Set("Authorization", "Bearer wrong")
	require.Equal(t, http.StatusUnauthorized, do(bad).Code)
	good := httptest.NewRequest("GET", "/riverui/", nil)
	good.Header.Set("Authorization", "Bearer "+token)
	require.Equal(t, http.StatusTeapot, do(good).Code)

	// A browser logs in once with ?token= and gets a cookie.
	login := do(httptest.NewRequest("GET", "/riverui/jobs?token="+token+"&state=running", nil))
	require.Equal(t, http.StatusSeeOther, login.Code)
	require.Equal(t, "/riverui/jobs?state=running", login.Header().Get("Location"))
	cookies := login.Result().Cookies()
	require.Len(t, cookies, 1)
	next := httptest.NewRequest("GET", "/riverui/jobs", nil)
	next.AddCookie(cookies[0])
	require.Equal(t, http.StatusTeapot, do(next).Code)

	_, err := runCmd(t, "run", "--riverui")
	require.ErrorContains(t, err, "--riverui-token")
}
