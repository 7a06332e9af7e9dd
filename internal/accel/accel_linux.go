package accel

// Detect makes the choice for this host.
func Detect() Choice { return DetectAt("/") }
