package sandbox

import (
	"fmt"
	"os"
)

// Preflight checks that more than one driver (and nex node preflight) makes.

// CheckReadable passes when path is a non-empty file this process can read.
func CheckReadable(name, path, fix string) Check {
	c := Check{Name: name, Fix: fix}
	if path == "" {
		c.Info = "not found"
		return c
	}
	f, err := os.Open(path)
	if err != nil {
		c.Info = err.Error()
		return c
	}
	defer f.Close()
	st, err := f.Stat()
	switch {
	case err != nil:
		c.Info = err.Error()
	case st.IsDir():
		c.Info = path + " is a directory"
	case st.Size() == 0:
		c.Info = path + " is empty"
	default:
		c.OK, c.Info, c.Fix = true, fmt.Sprintf("%s (%d MiB)", path, st.Size()>>20), ""
	}
	return c
}

// CheckWritableDir passes when dir exists (it is created) and a file can be
// made in it.
func CheckWritableDir(name, dir string) Check {
	c := Check{Name: name, Fix: fmt.Sprintf("mkdir -p %s and make it writable by the node's user", dir)}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		c.Info = err.Error()
		return c
	}
	f, err := os.CreateTemp(dir, ".preflight-")
	if err != nil {
		c.Info = err.Error()
		return c
	}
	f.Close()
	os.Remove(f.Name())
	c.OK, c.Info, c.Fix = true, dir+" is writable", ""
	return c
}
