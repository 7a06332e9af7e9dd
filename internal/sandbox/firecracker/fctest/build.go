package fctest

// ServerPackage is cmd/fcserver's import path.
const ServerPackage = "github.com/nex-engine/nex/internal/sandbox/firecracker/fctest/cmd/fcserver"
