package main

import (
	"fmt"
	"strings"

	"github.com/readside/readside/projectors"
	"github.com/readside/readside/projectors/shipped"
)

// selectProjections resolves a comma-separated list of names ("" = all).
func selectProjections(list string) ([]projectors.Projection, error) {
	if strings.TrimSpace(list) == "" {
		return shipped.All(), nil
	}
	var out []projectors.Projection
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		p, ok := shipped.ByName(name)
		if !ok {
			return nil, fmt.Errorf("unknown projection %q (known: %s)", name, strings.Join(names(), ", "))
		}
		out = append(out, p)
	}
	return out, nil
}

func names() []string {
	var out []string
	for _, p := range shipped.All() {
		out = append(out, p.Spec().Name)
	}
	return out
}
