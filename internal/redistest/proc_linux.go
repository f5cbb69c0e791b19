//go:build linux

package redistest

import (
	"os/exec"
	"syscall"
)

// configureProc makes the server die with the test binary (Pdeathsig) and
// puts it in its own process group, so that it and any child it forks (a
// BGSAVE, say) can be killed together and a Ctrl-C aimed at the test's
// process group is handled by the test, not the servers.
func configureProc(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Pdeathsig: syscall.SIGKILL,
		Setpgid:   true,
	}
}

// killProc sends SIGKILL to the server's process group.
func killProc(cmd *exec.Cmd) {
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
		// The group may be gone already; make sure the leader is.
		_ = cmd.Process.Kill()
	}
}
