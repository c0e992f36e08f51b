package cli

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Flags defines a command's flags with defaults taken from environment
// variables. A malformed environment value is reported when the command
// runs (not when it is defined, so that -h still works), and a secret taken
// from the environment is shown redacted in the help.
type Flags struct {
	fs  *pflag.FlagSet
	err error
}

// NewFlags returns the flags of cmd; cmd fails before running when an
// environment default did not parse.
func NewFlags(cmd *cobra.Command) *Flags {
	f := &Flags{fs: cmd.Flags()}
	prev := cmd.PreRunE
	cmd.PreRunE = func(c *cobra.Command, args []string) error {
		if f.err != nil {
			return f.err
		}
		if prev != nil {
			return prev(c, args)
		}
		return nil
	}
	return f
}

// FlagSet is the underlying pflag set, for plain flags without environment.
func (f *Flags) FlagSet() *pflag.FlagSet { return f.fs }

func (f *Flags) env(env string) (string, bool) {
	v, ok := os.LookupEnv(env)
	return v, ok && v != ""
}

func (f *Flags) fail(env, v, want string) {
	if f.err == nil {
		f.err = fmt.Errorf("%s=%q: not %s", env, v, want)
	}
}

func withEnv(help, env string) string { return help + " (env " + env + ")" }

// String defines a string flag defaulting to $env, else def.
func (f *Flags) String(p *string, name, env, def, help string) {
	if v, ok := f.env(env); ok {
		def = v
	}
	f.fs.StringVar(p, name, def, withEnv(help, env))
}

// Secret is String whose default is shown as REDACTED when set.
func (f *Flags) Secret(p *string, name, env, def, help string) {
	f.String(p, name, env, def, help)
	if fl := f.fs.Lookup(name); fl.DefValue != "" {
		fl.DefValue = Redacted
	}
}

// DatabaseURL defines --database-url (env DATABASE_URL); its default is
// shown with the password redacted.
func (f *Flags) DatabaseURL(p *string, def, help string) {
	f.String(p, "database-url", "DATABASE_URL", def, help)
	fl := f.fs.Lookup("database-url")
	fl.DefValue = RedactURL(fl.DefValue)
}

// Int defines an int flag defaulting to $env, else def.
func (f *Flags) Int(p *int, name, env string, def int, help string) {
	if v, ok := f.env(env); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			f.fail(env, v, "an integer")
		} else {
			def = n
		}
	}
	f.fs.IntVar(p, name, def, withEnv(help, env))
}

// Bool defines a bool flag defaulting to $env (true, false, 1, 0), else def.
func (f *Flags) Bool(p *bool, name, env string, def bool, help string) {
	if v, ok := f.env(env); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			f.fail(env, v, "true or false")
		} else {
			def = b
		}
	}
	f.fs.BoolVar(p, name, def, withEnv(help, env))
}

// Float defines a float flag defaulting to $env, else def.
func (f *Flags) Float(p *float64, name, env string, def float64, help string) {
	if v, ok := f.env(env); ok {
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			f.fail(env, v, "a number")
		} else {
			def = n
		}
	}
	f.fs.Float64Var(p, name, def, withEnv(help, env))
}

// Duration defines a duration flag defaulting to $env, else def.
func (f *Flags) Duration(p *time.Duration, name, env string, def time.Duration, help string) {
	if v, ok := f.env(env); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			f.fail(env, v, "a duration")
		} else {
			def = d
		}
	}
	f.fs.DurationVar(p, name, def, withEnv(help, env))
}

// Enum defines a string flag that only takes one of allowed (env may be
// empty for none); it completes in the shell to allowed.
func (f *Flags) Enum(cmd *cobra.Command, p *string, name, env, def string, allowed []string, help string) {
	if env != "" {
		if v, ok := f.env(env); ok {
			if !contains(allowed, v) {
				f.fail(env, v, "one of "+strings.Join(allowed, ", "))
			} else {
				def = v
			}
		}
		help = withEnv(help, env)
	}
	*p = def
	f.fs.Var(&enum{p: p, allowed: allowed}, name, help+": "+strings.Join(allowed, ", "))
	_ = cmd.RegisterFlagCompletionFunc(name, cobra.FixedCompletions(allowed, cobra.ShellCompDirectiveNoFileComp))
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

type enum struct {
	p       *string
	allowed []string
}

func (e *enum) String() string { return *e.p }
func (e *enum) Type() string   { return "string" }
func (e *enum) Set(v string) error {
	if !contains(e.allowed, v) {
		return fmt.Errorf("want one of %s", strings.Join(e.allowed, ", "))
	}
	*e.p = v
	return nil
}

// ExactArgs requires exactly the named positional arguments (none when no
// names), with a one-line reason naming the missing or extra one.
func ExactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) > len(names):
			return fmt.Errorf("%s: unexpected argument %q (see %s -h)", cmd.CommandPath(), args[len(names)], cmd.CommandPath())
		case len(args) < len(names):
			return fmt.Errorf("%s: missing argument %s (see %s -h)", cmd.CommandPath(), names[len(args)], cmd.CommandPath())
		}
		return nil
	}
}
