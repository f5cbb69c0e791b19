package subject

import "runtime/debug"

// moduleVersion returns "path@version" for a module compiled into this
// binary, or path alone when the build information does not have it
// (the main module, a replaced module, or a test binary without it).
func moduleVersion(path string) string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return path
	}
	for _, m := range bi.Deps {
		if m.Path != path {
			continue
		}
		if m.Replace != nil {
			return path + " => " + m.Replace.Path
		}
		return path + "@" + m.Version
	}
	return path
}

// Modules returns the version of every module in this binary, keyed by
// path, for the report header.
func Modules() map[string]string {
	out := map[string]string{}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return out
	}
	for _, m := range bi.Deps {
		v := m.Version
		if m.Replace != nil {
			v = "=> " + m.Replace.Path
		}
		out[m.Path] = v
	}
	return out
}
