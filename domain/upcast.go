package domain

import (
	"encoding/json"
	"fmt"
)

// Upcaster rewrites one event type's payload from schema version From to
// From+1.
type Upcaster struct {
	EventType string
	From      int
	Up        func(data map[string]json.RawMessage) error
}

// upcasters are applied in order by (event type, schema version).
var upcasters = []Upcaster{
	{EventType: ProductCreatedType, From: 1, Up: productCreatedV1ToV2},
}

// productCreatedV1ToV2 adds the SKU that version 1 did not have, derived
// from the product id the way the catalog did before SKUs were entered.
func productCreatedV1ToV2(m map[string]json.RawMessage) error {
	var id string
	if err := json.Unmarshal(m["product_id"], &id); err != nil || id == "" {
		return fmt.Errorf("ProductCreated v1: no product_id")
	}
	if _, ok := m["sku"]; !ok {
		b, _ := json.Marshal(DefaultSKU(id))
		m["sku"] = b
	}
	return nil
}

// Upcast brings data from schemaVersion to the event type's current
// version. A version newer than this binary knows is an error: the event
// was written by a newer writer.
func Upcast(eventType string, schemaVersion int, data []byte) ([]byte, error) {
	current := SchemaVersion(eventType)
	if schemaVersion < 1 {
		schemaVersion = 1
	}
	if schemaVersion > current {
		return nil, fmt.Errorf("%s schema version %d is newer than this binary knows (%d)", eventType, schemaVersion, current)
	}
	if schemaVersion == current {
		return data, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("upcast %s v%d: %w", eventType, schemaVersion, err)
	}
	for v := schemaVersion; v < current; v++ {
		found := false
		for _, u := range upcasters {
			if u.EventType == eventType && u.From == v {
				if err := u.Up(m); err != nil {
					return nil, fmt.Errorf("upcast %s v%d: %w", eventType, v, err)
				}
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("upcast %s: no upcaster from version %d", eventType, v)
		}
	}
	return json.Marshal(m)
}
