package projectors

import (
	"encoding/json"
	"strconv"
)

func jsonUnmarshal(b []byte, v any) error {
	if len(b) == 0 {
		return nil
	}
	return json.Unmarshal(b, v)
}

func itoa(i int) string { return strconv.Itoa(i) }
