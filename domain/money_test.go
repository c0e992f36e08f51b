package domain_test

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/readside/readside/domain"
)

func TestParseMoney(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]domain.Money{
		"0": 0, "12": 1200, "12.3": 1230, "12.34": 1234, "-12.34": -1234, "-0.05": -5, "007.50": 750,
		"9999999999.99": domain.MaxMoney, "-9999999999.99": -domain.MaxMoney,
	} {
		got, err := domain.ParseMoney(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{
		"", "null", "-", ".", "--5", "12.-5", "+7", "-+7", "--92233720368547758.07", "92233720368547758.07",
		"10000000000", "-10000000000", "10000000000.00", "1.234", "1e3", "12.", ".5", " 1", "1 ", "1,5", "0x10",
		"１２", "12.3.4", "NaN", "Infinity", "\x00",
	} {
		got, err := domain.ParseMoney(in)
		require.Error(t, err, "%q parsed as %v", in, got)
		require.True(t, errors.Is(err, domain.ErrValidation), "%q: %v", in, err)
	}
}

func TestMoneyJSON(t *testing.T) {
	t.Parallel()
	var m domain.Money
	require.NoError(t, json.Unmarshal([]byte(`"12.5"`), &m))
	require.Equal(t, domain.Money(1250), m)
	require.NoError(t, json.Unmarshal([]byte(`12.5`), &m))
	require.Equal(t, domain.Money(1250), m)
	for _, in := range []string{`"--5"`, `"+7"`, `null`, `"12.-5"`, `10000000000`, `"`, `""`, `"""`} {
		require.Error(t, json.Unmarshal([]byte(in), &m), in)
	}
	b, err := json.Marshal(domain.MaxMoney)
	require.NoError(t, err)
	require.Equal(t, "9999999999.99", string(b))
	require.Equal(t, "-0.05", domain.Money(-5).String())
}

// FuzzParseMoney: whatever ParseMoney accepts is within the read models'
// bound and survives a round trip through String; nothing panics.
func FuzzParseMoney(f *testing.F) {
	for _, s := range []string{"12.34", "-0.5", "--5", "12.-5", "+7", "--92233720368547758.07", "9999999999.99", "10000000000", "1e3", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := domain.ParseMoney(s)
		if err != nil {
			require.ErrorIs(t, err, domain.ErrValidation)
			return
		}
		require.True(t, domain.ValidAmount(m), "%q -> %d", s, m)
		back, err := domain.ParseMoney(m.String())
		require.NoError(t, err, "%q -> %s", s, m)
		require.Equal(t, m, back)
	})
}
