//go:build !linux

package pgtest

import (
	"os"
	"os/exec"
)

// configureProc cannot change users or tie the server's lifetime to the
// test binary outside Linux; servers are still stopped explicitly.
func configureProc(*exec.Cmd, *credential) {}

// quitProc asks the server to stop.
func quitProc(cmd *exec.Cmd) { _ = cmd.Process.Signal(os.Interrupt) }

// killProc kills the server process.
func killProc(cmd *exec.Cmd) { _ = cmd.Process.Kill() }
