//go:build linux

package pgtest

import (
	"os/exec"
	"syscall"
)

// configureProc runs the command as cred (when set), makes it die with the
// test binary (Pdeathsig) and puts it in its own process group, so that a
// Ctrl-C aimed at the test is handled by the test and the server's
// processes can be killed together.
func configureProc(cmd *exec.Cmd, cred *credential) {
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Pdeathsig: syscall.SIGKILL,
		Setpgid:   true,
	}
	if cred != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(cred.uid), Gid: uint32(cred.gid)}
	}
}

// quitProc asks the postmaster for an immediate shutdown.
func quitProc(cmd *exec.Cmd) { _ = cmd.Process.Signal(syscall.SIGQUIT) }

// killProc sends SIGKILL to the server's process group.
func killProc(cmd *exec.Cmd) {
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
		_ = cmd.Process.Kill()
	}
}
