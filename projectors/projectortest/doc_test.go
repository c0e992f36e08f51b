package projectortest_test

import (
	"testing"

	"github.com/readside/readside/projectors/ordersummary"
	"github.com/readside/readside/projectors/projectortest"
)

func TestMain(m *testing.M) { projectortest.Main(m) }

// The package documentation's example, as written there: it compiles
// against public names only and passes for a shipped projection.
func TestConformance(t *testing.T) {
	t.Parallel()
	projectortest.Run(t, projectortest.NewDB, ordersummary.New(),
		projectortest.Lifecycles{Orders: 80}.Generator(), projectortest.Features{})
}
