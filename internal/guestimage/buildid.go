package guestimage

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// AgentIDFile names, in an image's directory, the Go build ID of the nex
// that is the image's /init. A node compares it with its own: after an
// upgrade the newest image in the cache may still hold the previous nex.
const AgentIDFile = "agent.buildid"

// GoBuildID returns the Go build ID of the executable at path, from its
// .note.go.buildid note (what `go tool buildid` prints).
func GoBuildID(path string) (string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	id, err := goBuildID(f)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return id, nil
}

func goBuildID(f *elf.File) (string, error) {
	s := f.Section(".note.go.buildid")
	if s == nil {
		return "", errors.New("no Go build ID")
	}
	b, err := s.Data()
	if err != nil {
		return "", err
	}
	// An ELF note: namesz, descsz, type, then name and desc, each padded
	// to 4 bytes. Go's name is "Go\0\0".
	if len(b) < 16 {
		return "", errors.New("short Go build ID note")
	}
	namesz, descsz := binary.LittleEndian.Uint32(b[0:]), binary.LittleEndian.Uint32(b[4:])
	off := 12 + (namesz+3)&^3
	if namesz != 4 || !bytes.Equal(b[12:16], []byte("Go\x00\x00")) || uint64(off)+uint64(descsz) > uint64(len(b)) {
		return "", errors.New("malformed Go build ID note")
	}
	return string(b[off : off+descsz]), nil
}

// ImageAgentID returns the build ID recorded for the /init of the image
// whose files are in dir; "" when the image predates the record.
func ImageAgentID(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, AgentIDFile))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// agentBuildID is the build ID of the agent executable's bytes; "" when it
// has none (an image without it still boots; only the staleness check
// loses it).
func agentBuildID(agent []byte) string {
	f, err := elf.NewFile(bytes.NewReader(agent))
	if err != nil {
		return ""
	}
	id, _ := goBuildID(f)
	return id
}

// recordAgentID writes the agent's build ID into the image's directory.
func recordAgentID(dir, id string) {
	if id == "" || ImageAgentID(dir) == id {
		return
	}
	_ = os.WriteFile(filepath.Join(dir, AgentIDFile), []byte(id+"\n"), 0o644)
}
