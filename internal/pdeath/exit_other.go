//go:build !linux

package pdeath

func awaitExit(int) {}
