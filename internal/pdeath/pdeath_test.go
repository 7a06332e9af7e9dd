package pdeath

import (
	"errors"
	"os/exec"
	"testing"
	"time"
)

func TestStartRunsHooksInOrder(t *testing.T) {
	cmd := exec.Command("sh", "-c", "exit 3")
	var pid int
	done := make(chan error, 1)
	if err := Start(cmd, func() { pid = cmd.Process.Pid }, func(err error) { done <- err }); err != nil {
		t.Fatal(err)
	}
	if pid == 0 {
		t.Fatal("started did not run before Start returned")
	}
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Fatalf("exited with %v, want exit status 3", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("exited never ran")
	}
}

func TestStartFailure(t *testing.T) {
	called := false
	err := Start(exec.Command("/nonexistent/binary"), func() { called = true }, func(error) { called = true })
	if err == nil || called {
		t.Fatalf("Start of a missing binary: %v (hooks called: %v)", err, called)
	}
}
