// Package projectorcli is readside's projector command line as a library:
// a user who writes projections gets the whole operator surface for them
// (run, status, reset, rebuild, pause, resume, dead-letters, migrate,
// version, shell completion) from a main of a few lines:
//
//	func main() {
//		projectorcli.Main(context.Background(), os.Args, myprojection.New(), ordersummary.New())
//	}
//
// The operator commands accept the names of the projections the binary
// carries, checked against what is registered in the database, not a list
// shipped with readside. cmd/projector is one such main.
//
// The command line is built on spf13/cobra, as River's own CLI (rivercli)
// is: flags go before or after arguments, every command and subcommand
// takes -h, and shells complete commands, flags, enum values and
// projection names.
package projectorcli
