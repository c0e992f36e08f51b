package projectorcli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/readside/readside/internal/cli"
	"github.com/readside/readside/internal/dbschema"
	"github.com/readside/readside/projectors"
)

// NameDefault is the command name when Config.Name is empty.
const NameDefault = "projector"

// Config is a projector binary: the projections it carries and any extra
// commands.
type Config struct {
	// Name is the command name in usage lines and error messages. Empty
	// means NameDefault.
	Name string

	// Projections are what `run` applies and the names the operator
	// commands accept. Required: at least one.
	Projections []projectors.Projection

	// Commands are added beside the built-in ones (cmd/projector adds
	// `demo`, which only makes sense for the shipped domain).
	Commands []*cobra.Command
}

// Main runs the command line args (os.Args: the program name first) for
// the given projections and exits: 0 on success, 1 with a one-line reason
// on stderr otherwise (verify: 1 when the read model differs, 2 when it
// could not verify). SIGINT and SIGTERM cancel the command's context.
func Main(ctx context.Context, args []string, projections ...projectors.Projection) {
	name := NameDefault
	if len(args) > 0 {
		name = filepath.Base(args[0])
		args = args[1:]
	}
	Config{Name: name, Projections: projections}.Main(ctx, args)
}

// Main runs args (without the program name) and exits like the package's
// Main.
func (c Config) Main(ctx context.Context, args []string) {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	err := c.Run(ctx, args, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %s\n", c.name(), cli.OneLine(err))
		code := 1
		var ec interface{ ExitCode() int }
		if errors.As(err, &ec) {
			code = ec.ExitCode()
		}
		os.Exit(code)
	}
}

// Run runs args (without the program name), writing to stdout and stderr,
// and returns the error the command failed with; -h is not an error.
func (c Config) Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	root, err := c.Command()
	if err != nil {
		return err
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	return root.ExecuteContext(ctx)
}

func (c Config) name() string { return cmpOr(c.Name, NameDefault) }

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Command returns the root command, for a main that wants to add to it or
// run it itself.
func (c Config) Command() (*cobra.Command, error) {
	a, err := newApp(c)
	if err != nil {
		return nil, err
	}
	root := &cobra.Command{
		Use:   a.name,
		Short: "run and operate readside projections",
		Long: a.name + " runs a fleet member that applies readside projections to their read models, and operates them:\n" +
			"status, reset, rebuild, scale, repair, verify, pause, resume, dead letters, migrations.\n\n" +
			"Projections in this binary: " + strings.Join(a.names(), ", ") + ".\n" +
			"Every command takes --database-url (env DATABASE_URL) and -h.",
		Version:       cli.Version(a.name),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			_ = cmd.Usage()
			return fmt.Errorf("no command given (see %s -h)", a.name)
		},
	}
	root.PersistentFlags().StringVar(&a.schemaFlag, "schema", cmpOr(os.Getenv("READSIDE_SCHEMA"), string(dbschema.Default)),
		"PostgreSQL schema of readside's tables, functions and River's tables (env READSIDE_SCHEMA)")
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		n, err := dbschema.Parse(a.schemaFlag)
		if err != nil {
			return fmt.Errorf("--schema: %w", err)
		}
		a.schema = n
		return nil
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return fmt.Errorf("%s: %w (see %s -h)", cmd.CommandPath(), err, cmd.CommandPath())
	})
	root.AddGroup(&cobra.Group{ID: "fleet", Title: "Fleet:"}, &cobra.Group{ID: "ops", Title: "Operations:"})
	for _, sub := range []*cobra.Command{
		a.migrateCommand(), a.adoptCommand(), a.runCommand(), a.statusCommand(),
		a.pauseResumeCommand("pause"), a.pauseResumeCommand("resume"),
		a.resetCommand(), a.rebuildCommand(), a.scaleCommand(), a.repairCommand(), a.verifyCommand(), a.deadLettersCommand(),
	} {
		root.AddCommand(sub)
	}
	root.AddCommand(versionCommand(a.name))
	for _, sub := range c.Commands {
		root.AddCommand(sub)
	}
	return root, nil
}

// app is what every command shares: the binary's projections.
type app struct {
	name       string
	projs      []projectors.Projection
	byName     map[string]projectors.Projection
	schemaFlag string        // --schema as given
	schema     dbschema.Name // --schema, validated before any command runs
}

func newApp(c Config) (*app, error) {
	if len(c.Projections) == 0 {
		return nil, errors.New("projectorcli: no projections given")
	}
	a := &app{name: c.name(), projs: c.Projections, byName: map[string]projectors.Projection{}}
	for _, p := range c.Projections {
		if p == nil {
			return nil, errors.New("projectorcli: nil projection")
		}
		n := p.Spec().Name
		if _, dup := a.byName[n]; dup {
			return nil, fmt.Errorf("projectorcli: projection %q given twice", n)
		}
		a.byName[n] = p
	}
	return a, nil
}

func (a *app) names() []string {
	out := make([]string, 0, len(a.projs))
	for _, p := range a.projs {
		out = append(out, p.Spec().Name)
	}
	sort.Strings(out)
	return out
}

// completeNames completes a projection name argument.
func (a *app) completeNames(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return a.names(), cobra.ShellCompDirectiveNoFileComp
}

// groupRun makes a command whose work is in its subcommands refuse to run
// bare or with an unknown subcommand.
func groupRun(subs string) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return fmt.Errorf("%s: unknown subcommand %q (want %s)", cmd.CommandPath(), args[0], subs)
		}
		return fmt.Errorf("%s: missing subcommand (want %s; see %s -h)", cmd.CommandPath(), subs, cmd.CommandPath())
	}
}

func versionCommand(name string) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "print the module version, VCS revision and Go version of this binary",
		Args:  cli.ExactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), cli.Version(name))
			return nil
		},
	}
}
