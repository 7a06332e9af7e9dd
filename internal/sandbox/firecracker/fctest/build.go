package fctest

// RecordFile is fcserver's default --record file, beside the API socket.
const RecordFile = "fctest-api.log"

// ServerPackage is cmd/fcserver's import path.
const ServerPackage = "github.com/nex-engine/nex/internal/sandbox/firecracker/fctest/cmd/fcserver"
