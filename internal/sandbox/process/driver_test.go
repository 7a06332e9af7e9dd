package process_test

import (
	"testing"

	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/process"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

func TestConformance(t *testing.T) {
	nex := sandboxtest.BuildNex(t)
	sandboxtest.Run(t, func(t *testing.T) sandbox.Driver {
		d, err := process.New(process.Config{AgentBinary: nex})
		if err != nil {
			t.Fatal(err)
		}
		if !sandbox.IsUnsafe(d) || d.Name() != "process" {
			t.Fatalf("process driver: name %q, unsafe %v", d.Name(), sandbox.IsUnsafe(d))
		}
		return d
	})
}
