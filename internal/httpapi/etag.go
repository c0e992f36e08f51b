package httpapi

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
)

// CacheControl is sent with every read answer: a client or proxy may keep
// it but must revalidate it before each use (no-cache), which costs a
// query but not the body when nothing changed (If-None-Match -> 304). The
// API keeps no cache of its own, so no answer is older than its request,
// and a read-your-writes token is always honoured before the query runs.
const CacheControl = "no-cache"

// writeCacheable writes v as a 200 JSON answer with a strong ETag, the
// hash of the body, or a 304 without body when the request's If-None-Match
// names it. The tag is derived from the answer itself rather than from a
// row version or a checkpoint: a repair or a reset rewrites rows without
// changing their version, and a version-based tag would revalidate the
// answer from before it.
func writeCacheable(w http.ResponseWriter, r *http.Request, v any) {
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(v); err != nil {
		WriteError(w, http.StatusInternalServerError, "encode: "+err.Error())
		return
	}
	sum := sha256.Sum256(buf.Bytes())
	etag := `"` + base64.RawURLEncoding.EncodeToString(sum[:18]) + `"`
	h := w.Header()
	h.Set("ETag", etag)
	h.Set("Cache-Control", CacheControl)
	h.Add("Vary", ConsistencyTokenHeader)
	if etagMatch(r.Header.Get("If-None-Match"), etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h.Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(buf.Bytes()) // the client may have gone; nothing to do
}

// etagMatch implements If-None-Match's weak comparison over a list.
func etagMatch(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == "*" || t == etag {
			return true
		}
	}
	return false
}
