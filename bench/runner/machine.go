package runner

import (
	"bufio"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// Header describes the run: when, on what, with what.
type Header struct {
	Date         string            `json:"date"`
	GOOS         string            `json:"goos"`
	GOARCH       string            `json:"goarch"`
	CPU          string            `json:"cpu"`
	Cores        int               `json:"cores"`
	GOMAXPROCS   int               `json:"gomaxprocs"`
	GoVersion    string            `json:"go_version"`
	RedisVersion string            `json:"redis_version"`
	GitCommit    string            `json:"git_commit"`
	Mode         string            `json:"mode"`
	Rounds       int               `json:"rounds"`
	WallTime     string            `json:"wall_time"`
	Modules      map[string]string `json:"modules"`
	// Command is how the report was made, and Note what its maker says
	// about the conditions; both are set by the command, not the runner.
	Command string `json:"command,omitempty"`
	Note    string `json:"note,omitempty"`
}

func newHeader() Header {
	return Header{
		Date:       time.Now().UTC().Format(time.RFC3339),
		GOOS:       runtime.GOOS,
		GOARCH:     runtime.GOARCH,
		CPU:        cpuModel(),
		Cores:      runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0),
		GoVersion:  runtime.Version(),
		GitCommit:  gitCommit(),
	}
}

// cpuModel reads the first "model name" of /proc/cpuinfo.
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// gitCommit is the commit of the working tree the runner runs in, with
// "+dirty" when it has uncommitted changes.
func gitCommit() string {
	out, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output()
	if err == nil && len(strings.TrimSpace(string(st))) > 0 {
		c += "+dirty"
	}
	return c
}
