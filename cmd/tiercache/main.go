// Command tiercache shows, with numbers and plots, what each layer of
// tiercache buys over plain cache-aside. Run it with no set-up at all:
//
//	go run ./cmd/tiercache demo
//
// It simulates a service in front of a slow database (an embedded Redis by
// default), prints a table of the scenarios and writes plots and an HTML
// report into ./tiercache-demo-out; see "tiercache help".
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/redis/go-redis/v9"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// go-redis logs every failed dial to the standard logger; the demo
	// reports a Redis it cannot reach once, itself.
	redis.SetLogger(quietLogger{})
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	code := exitCode(err)
	if code != 0 {
		printError(os.Stderr, err)
	}
	os.Exit(code)
}

// printError reports run's error: "tiercache: " and the message, then,
// for a usage error, where to read the usage.
func printError(w io.Writer, err error) {
	fmt.Fprintln(w, "tiercache:", err)
	var ue *usageError
	if errors.As(err, &ue) && ue.hint != "" {
		fmt.Fprint(w, ue.hint)
	}
}

// exitCode maps run's error to the process status: 2 for a usage error,
// 0 for none or an explicit -help, 1 for anything else.
func exitCode(err error) int {
	var ue *usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		return 2
	default:
		return 1
	}
}

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}
