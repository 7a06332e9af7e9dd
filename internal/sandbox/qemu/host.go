package qemu

import (
	"bufio"
	"io"
	"math"
	"strconv"
	"strings"
)

// tscKHzFrom reads the host's TSC frequency in kHz from /proc/cpuinfo's
// "cpu MHz" line. Under TCG the guest's TSC runs at the host's rate, and
// giving it to the guest kernel (tsc_early_khz) spares it the PIT
// calibration that hangs microvm boots. 0 when not found.
func tscKHzFrom(cpuinfo io.Reader) int {
	sc := bufio.NewScanner(cpuinfo)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || mhz <= 0 {
			return 0
		}
		return int(math.Round(mhz * 1000))
	}
	return 0
}
