//go:build !linux

package vminit

import (
	"fmt"
	"io"
	"os"

	"github.com/nex-engine/nex/internal/agentapi"
)

// defaultRoom leaves room unbounded off Linux, where no guest runs.
func defaultRoom(string) (int64, error) { return agentapi.MaxStagedSize, nil }

func copyFromDisk(dst, disk *os.File, size int64) error {
	n, err := io.Copy(dst, io.NewSectionReader(disk, 0, size))
	if err == nil && n < size {
		err = fmt.Errorf("stage disk ended after %d of %d bytes", n, size)
	}
	return err
}
