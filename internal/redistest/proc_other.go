//go:build !linux

package redistest

import "os/exec"

// configureProc is a no-op outside Linux: there is no portable way to tie
// the server's lifetime to the test binary. Servers are still killed
// explicitly when the test (or [Main]) ends.
func configureProc(*exec.Cmd) {}

// killProc kills the server process.
func killProc(cmd *exec.Cmd) { _ = cmd.Process.Kill() }
