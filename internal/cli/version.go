package cli

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// ReadsideModule is readside's module path, reported by Version when it is
// a dependency of the main module (a user's own projector binary).
const ReadsideModule = "github.com/readside/readside"

// Version describes the running binary from its build information: the
// main module and its version, readside's version when readside is a
// dependency, the VCS revision (with "+dirty" for a modified tree) and the
// Go version.
func Version(name string) string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return name + " (no build information)"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s", name, bi.Main.Path, orDevel(bi.Main.Version))
	if bi.Main.Path != ReadsideModule {
		for _, d := range bi.Deps {
			if d.Path == ReadsideModule {
				v := d.Version
				if d.Replace != nil {
					v += " => " + d.Replace.Path + " " + d.Replace.Version
				}
				fmt.Fprintf(&b, " (readside %s)", orDevel(strings.TrimSpace(v)))
			}
		}
	}
	rev, modified := "unknown", ""
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "+dirty"
			}
		}
	}
	fmt.Fprintf(&b, ", revision %s%s, %s", rev, modified, bi.GoVersion)
	return b.String()
}

func orDevel(v string) string {
	if v == "" {
		return "(devel)"
	}
	return v
}
