package observe_test

import (
	"testing"

	"github.com/readside/readside/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }
