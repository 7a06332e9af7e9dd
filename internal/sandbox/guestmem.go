package sandbox

import "os"

// Guest RAM the kernel and a Go agent need besides the initramfs: the 6.1
// cloud kernel keeps ≈ 45 MiB, the agent and its workload need the rest.
// Measured: a 23 MiB initramfs boots in 128 MiB, a 33 MiB one does not.
const guestBaseMemoryMiB = 80

// MinGuestMemoryMiB is the smallest VM that can unpack initrd: the archive
// and its unpacked copy are both in RAM until the archive is freed (with
// -m 128 and a 33 MiB initrd the kernel reports "Initramfs unpacking
// failed: write error" and boots without /init's modules). VM drivers raise
// smaller memory sizes to it. 0 when initrd cannot be read.
func MinGuestMemoryMiB(initrd string) int {
	st, err := os.Stat(initrd)
	if err != nil {
		return 0
	}
	mib := int((2*st.Size())>>20) + guestBaseMemoryMiB
	return (mib + 15) / 16 * 16
}
