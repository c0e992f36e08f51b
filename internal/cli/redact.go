package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Redacted replaces a secret in help output, logs and errors.
const Redacted = "REDACTED"

// Unparseable is what RedactURL shows for a connection string pgx does not
// accept: none of it.
const Unparseable = Redacted + " (unparseable)"

// RedactURL returns the connection string s, a URL or a keyword/value
// string, with every password in it (password, sslpassword, the URL's
// userinfo) replaced by REDACTED. The password is the one pgx would send:
// s is split the way pgconn.ParseConfig splits it (libpq's rules, under
// which a URL password may hold # ? [ and the like unescaped, and a
// keyword/value one quotes and backslashes), and the result is parsed again
// to check that only the passwords changed. A string pgx does not accept, or
// whose host holds an unescaped @ (the rest of a password, most likely), is
// not shown at all: Unparseable.
func RedactURL(s string) string {
	if s == "" {
		return ""
	}
	out, err := redact(s)
	if err != nil {
		return Unparseable
	}
	return out
}

var errHostAt = errors.New(`a host name holds "@" (an @ in a URL password must be written %40)`)

// redact is RedactURL with the reason it refused.
func redact(s string) (string, error) {
	cfg, err := pgconn.ParseConfig(s)
	if err != nil {
		return "", err
	}
	if err := checkHosts(cfg); err != nil {
		return "", err
	}
	var out string
	var masked int
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		out, masked = redactURI(s)
	} else {
		out, masked, err = redactKeywordValue(s)
		if err != nil {
			return "", err
		}
	}
	if err := sameButPassword(cfg, out, masked); err != nil {
		return "", err
	}
	return out, nil
}

// checkHosts refuses a host name with an @: libpq's URL rules end the
// userinfo at the first @, so in postgres://u:sec@ret@h the host is
// "ret@h" and printing it would print part of the password.
func checkHosts(cfg *pgconn.Config) error {
	if strings.Contains(cfg.Host, "@") {
		return errHostAt
	}
	for _, f := range cfg.Fallbacks {
		if strings.Contains(f.Host, "@") {
			return errHostAt
		}
	}
	return nil
}

// sameButPassword parses out, the redacted form of what cfg was parsed
// from, and checks that it names the same servers, user, database and
// parameters, and that its password is REDACTED when masked > 0 passwords
// were replaced (else the one the environment or the passfile gives both).
func sameButPassword(cfg *pgconn.Config, out string, masked int) error {
	got, err := pgconn.ParseConfig(out)
	if err != nil {
		return fmt.Errorf("redacted form does not parse: %w", err)
	}
	want := cfg.Password
	if masked > 0 && cfg.Password != "" {
		want = Redacted
	}
	if got.Password != want || got.User != cfg.User || got.Database != cfg.Database ||
		!slices.Equal(servers(got), servers(cfg)) || !maps.Equal(params(got), params(cfg)) {
		return errors.New("redacted form differs in more than its password")
	}
	return nil
}

func servers(cfg *pgconn.Config) []string {
	s := []string{fmt.Sprintf("%s:%d", cfg.Host, cfg.Port)}
	for _, f := range cfg.Fallbacks {
		s = append(s, fmt.Sprintf("%s:%d", f.Host, f.Port))
	}
	return s
}

// params are the runtime parameters but those redacted by name.
func params(cfg *pgconn.Config) map[string]string {
	p := maps.Clone(cfg.RuntimeParams)
	maps.DeleteFunc(p, func(k, _ string) bool { return isPasswordKey(k) })
	return p
}

// isPasswordKey reports whether a connection parameter holds a secret. Any
// case: pgx only reads "password", but PASSWORD=x is still someone's
// password, sent to the server as a setting.
func isPasswordKey(k string) bool {
	return strings.EqualFold(k, "password") || strings.EqualFold(k, "sslpassword")
}

// redactURI masks the passwords of a postgres:// URI, walking it as
// pgconn's parseURLSettings (libpq's conninfo_uri_parse_options) does: the
// userinfo ends at the first @ before any /, the password is what follows
// its first :, a list of [v6]:port or host:port entries, an optional
// /dbname, then &-separated query pairs.
func redactURI(s string) (string, int) {
	scheme := "postgres://"
	if strings.HasPrefix(s, "postgresql://") {
		scheme = "postgresql://"
	}
	p := s[len(scheme):]
	var b strings.Builder
	b.WriteString(scheme)
	masked := 0
	if i := strings.IndexAny(p, "@/"); i >= 0 && p[i] == '@' {
		user, password, ok := strings.Cut(p[:i], ":")
		b.WriteString(user)
		if ok {
			b.WriteByte(':')
			if password != "" {
				b.WriteString(Redacted)
				masked++
			}
		}
		b.WriteByte('@')
		p = p[i+1:]
	}
	// The netloc list: up to the first / or ? outside an IPv6 bracket.
	end := 0
	for {
		if end < len(p) && p[end] == '[' {
			j := strings.IndexByte(p[end:], ']')
			if j < 0 {
				end = len(p)
				break
			}
			end += j + 1
		}
		j := strings.IndexAny(p[end:], "/?,")
		if j < 0 {
			end = len(p)
			break
		}
		end += j
		if p[end] != ',' {
			break
		}
		end++
	}
	b.WriteString(p[:end])
	p = p[end:]
	if strings.HasPrefix(p, "/") {
		i := strings.IndexByte(p, '?')
		if i < 0 {
			i = len(p)
		}
		b.WriteString(p[:i])
		p = p[i:]
	}
	if query, ok := strings.CutPrefix(p, "?"); ok {
		b.WriteByte('?')
		for i, pair := range strings.Split(query, "&") {
			if i > 0 {
				b.WriteByte('&')
			}
			key, value, ok := strings.Cut(pair, "=")
			if ok && isPasswordKey(uriDecodeLenient(key)) && strings.Trim(value, " ") != "" {
				b.WriteString(key + "=" + Redacted)
				masked++
				continue
			}
			b.WriteString(pair)
		}
	}
	return b.String(), masked
}

// uriDecodeLenient percent-decodes s, leaving what is not a valid escape as
// it is, and trims spaces, as libpq reads a query key.
func uriDecodeLenient(s string) string {
	s = strings.Trim(s, " ")
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if hi, ok := unhex(s[i+1]); ok {
				if lo, ok := unhex(s[i+2]); ok {
					b.WriteByte(hi<<4 | lo)
					i += 2
					continue
				}
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

const kvSpace = " \t\n\r\v\f"

// redactKeywordValue masks the password values of a keyword/value string,
// reading it as pgconn's parseKeywordValueSettings (libpq's conninfo_parse)
// does: keyword = value, the value either quoted ('...', \ escapes any
// byte) or running to the next space (\ escapes any byte).
func redactKeywordValue(s string) (string, int, error) {
	var b strings.Builder
	masked := 0
	rest := s
	for {
		trimmed := strings.TrimLeft(rest, kvSpace)
		b.WriteString(rest[:len(rest)-len(trimmed)])
		rest = trimmed
		if rest == "" {
			return b.String(), masked, nil
		}
		eq := strings.IndexByte(rest, '=')
		if eq < 0 {
			return "", 0, errors.New("invalid keyword/value")
		}
		key := strings.Trim(rest[:eq], kvSpace)
		afterEq := rest[eq+1:]
		value := strings.TrimLeft(afterEq, kvSpace)
		b.WriteString(rest[:eq+1+len(afterEq)-len(value)])
		n, err := kvValueLen(value)
		if err != nil {
			return "", 0, err
		}
		raw := value[:n]
		if isPasswordKey(key) && raw != "" && raw != "''" {
			b.WriteString(Redacted)
			masked++
		} else {
			b.WriteString(raw)
		}
		rest = value[n:]
	}
}

// kvValueLen is the length of the raw value (quotes included) at the start
// of s.
func kvValueLen(s string) (int, error) {
	if s == "" {
		return 0, nil
	}
	if s[0] != '\'' {
		i := 0
		for ; i < len(s) && !strings.ContainsRune(kvSpace, rune(s[i])); i++ {
			if s[i] == '\\' {
				i++
			}
		}
		return min(i, len(s)), nil
	}
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '\'':
			return i + 1, nil
		}
	}
	return 0, errors.New("unterminated quoted string")
}

// parseError describes a connection string pgx refused without quoting
// it: where its boundaries are ambiguous, any part of it may be a
// password. A file it names that cannot be read, or a setting that is not
// a number, is named: those come from settings pgx has already told apart.
func parseError(err error) error {
	if errors.Is(err, errHostAt) {
		return fmt.Errorf("database URL %s: %w", Unparseable, err)
	}
	msg := "database URL " + Unparseable + ": pgx does not accept it (in a URL, percent-encode @ : / in the user and password)"
	var pathErr *fs.PathError
	var numErr *strconv.NumError
	switch {
	case errors.As(err, &pathErr):
		msg += ": " + pathErr.Error()
	case errors.As(err, &numErr):
		msg += ": " + numErr.Error()
	}
	return errors.New(msg)
}
