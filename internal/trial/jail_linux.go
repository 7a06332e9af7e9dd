package trial

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nex-engine/nex/internal/reaper"
)

// nobody is the user and group a trial start runs as.
const nobody = 65534

// startJailed starts cmd chrooted in jail, as nobody, in a PID namespace
// of its own and in a network namespace made for it, whose loopback is up
// and where the returned listener, the trial's NATS server, takes
// connections on NATSAddr. cmd is started through the reaper, which a VM's
// PID 1 runs, so its exit status stays for wait.
//
// A process's network namespace is its thread's: the namespace is made on
// a thread locked to this call's goroutine, the listener's socket and the
// child (forked from that thread) are made in it, and the thread ends with
// the goroutine, never serving another.
func startJailed(cmd *exec.Cmd, jail string) (net.Listener, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Chroot:     jail,
		Credential: &syscall.Credential{Uid: nobody, Gid: nobody},
		Cloneflags: syscall.CLONE_NEWPID,
	}
	type started struct {
		ln  net.Listener
		err error
	}
	ch := make(chan started, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see above
		ln, err := func() (net.Listener, error) {
			if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
				return nil, fmt.Errorf("%w (unshare: %v)", ErrUnsupported, err)
			}
			if err := loopbackUp(); err != nil {
				return nil, fmt.Errorf("trial start: loopback: %w", err)
			}
			ln, err := net.Listen("tcp", NATSAddr)
			if err != nil {
				return nil, fmt.Errorf("trial start: %w", err)
			}
			if err := reaper.Start(cmd); err != nil {
				ln.Close()
				if errors.Is(err, syscall.EINVAL) { // no PID namespaces
					return nil, fmt.Errorf("%w (%v)", ErrUnsupported, err)
				}
				return nil, err
			}
			return ln, nil
		}()
		ch <- started{ln, err}
	}()
	s := <-ch
	return s.ln, s.err
}

// loopbackUp sets the flags of the calling thread's loopback device up.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	ifr.SetUint16(unix.IFF_UP | unix.IFF_LOOPBACK | unix.IFF_RUNNING)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// wait waits for cmd, then lets the reaper forget it.
func wait(cmd *exec.Cmd) error {
	err := cmd.Wait()
	reaper.Release(cmd.Process.Pid)
	return err
}
