package domain

import (
	"fmt"
	"strconv"
	"strings"
)

// Money is an amount in cents. It is written to JSON as a decimal number
// with two places (12.5 -> 12.50) so that SQL reads it exactly as numeric.
type Money int64

// MaxMoney is the largest amount the read models hold: their amounts are
// numeric(12,2), so anything from 10^10 up cannot be stored (SQLSTATE
// 22003). Commands refuse larger amounts and totals, ParseMoney refuses
// larger numbers, and Decode refuses events that carry them, so no client
// can create an event that every projection would park.
const MaxMoney Money = 1e12 - 1 // 9999999999.99

func (m Money) String() string { return string(m.append(nil)) }

// append appends the amount with two decimal places to b (without fmt:
// every appended event encodes its amounts).
func (m Money) append(b []byte) []byte {
	v := uint64(m)
	if m < 0 {
		b, v = append(b, '-'), uint64(-m) // -MinInt64 wraps to itself, which is right as uint64
	}
	b = strconv.AppendUint(b, v/100, 10)
	return append(b, '.', byte('0'+v%100/10), byte('0'+v%10))
}

// MarshalJSON writes a JSON number with two decimal places.
func (m Money) MarshalJSON() ([]byte, error) { return m.append(make([]byte, 0, 24)), nil }

// UnmarshalJSON reads a JSON number, or a string holding one, with at most
// two decimals and at most MaxMoney in absolute value.
func (m *Money) UnmarshalJSON(b []byte) error {
	s := string(b)
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		s = s[1 : len(s)-1]
	}
	v, err := ParseMoney(s)
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// MoneyError is an amount ParseMoney refused. It unwraps to ErrValidation
// (the HTTP API answers 422).
type MoneyError struct {
	Input  string
	Reason string
}

func (e *MoneyError) Error() string { return fmt.Sprintf("money: %q %s", e.Input, e.Reason) }

// Unwrap makes a MoneyError an ErrValidation.
func (e *MoneyError) Unwrap() error { return ErrValidation }

// ParseMoney parses an amount: an optional '-', one or more digits, and
// optionally '.' followed by one or two digits ("12", "-12.3", "12.34").
// Anything else ("+7", "--5", "12.-5", "1e3", ".5", "12.") is an error, as
// is an amount above MaxMoney in absolute value.
func ParseMoney(s string) (Money, error) {
	in := s
	bad := func(reason string) (Money, error) { return 0, &MoneyError{Input: in, Reason: reason} }
	if s == "" || s == "null" {
		return bad("is empty; want an amount such as 12.34")
	}
	neg := s[0] == '-'
	if neg {
		s = s[1:]
	}
	whole, frac, hasDot := strings.Cut(s, ".")
	switch {
	case whole == "" || !digits(whole):
		return bad("is not an amount: want an optional '-', digits, and at most two decimals")
	case hasDot && (frac == "" || !digits(frac)):
		return bad("is not an amount: want digits after the decimal point")
	case len(frac) > 2:
		return bad("has more than two decimal places")
	}
	// Leading zeros are allowed ("007.50"); the bound is checked digit by
	// digit, so nothing can overflow.
	var cents int64
	for _, c := range whole {
		cents = cents*10 + int64(c-'0')
		if cents > int64(MaxMoney/100) {
			return bad(fmt.Sprintf("is out of range: at most %s", MaxMoney))
		}
	}
	cents *= 100
	if len(frac) > 0 {
		cents += int64(frac[0]-'0') * 10
	}
	if len(frac) > 1 {
		cents += int64(frac[1] - '0')
	}
	if neg {
		cents = -cents
	}
	return Money(cents), nil
}

// ValidAmount reports whether m fits the read models (|m| <= MaxMoney).
func ValidAmount(m Money) bool { return m >= -MaxMoney && m <= MaxMoney }

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
