// Command netprobe is the guest-isolation test's workload: it tries to reach
// each address it is given and prints one line per try,
// "probe <network>/<addr> <open|closed: reason>", then "probes done".
// An open TCP address must also greet it (a NATS server sends INFO first)
// for the probe to count as open. The target "rand/" prints 16 bytes of
// crypto/rand in hex instead (the snapshot test compares clones'), and
// "sha256/<path>" the file's sha256 in hex (the staging test's check). It then
// waits to be stopped, so its output never races its own exit.
package main

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	for _, target := range os.Args[1:] {
		network, addr, _ := strings.Cut(target, "/")
		fmt.Printf("probe %s %s\n", target, probe(network, addr))
	}
	fmt.Println("probes done")
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}

func probe(network, addr string) string {
	if network == "sha256" {
		b, err := os.ReadFile(addr)
		if err != nil {
			return "error: " + err.Error()
		}
		sum := sha256.Sum256(b)
		return hex.EncodeToString(sum[:])
	}
	if network == "rand" {
		b := make([]byte, 16)
		if _, err := rand.Read(b); err != nil {
			return "error: " + err.Error()
		}
		return hex.EncodeToString(b)
	}
	c, err := net.DialTimeout(network, addr, 3*time.Second)
	if err != nil {
		return "closed: " + err.Error()
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if network == "udp" {
		// A DNS query for "." NS; only an answer proves the path.
		q := []byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1}
		if _, err := c.Write(q); err != nil {
			return "closed: " + err.Error()
		}
		b := make([]byte, 512)
		if _, err := c.Read(b); err != nil {
			return "closed: " + err.Error()
		}
		return "open"
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "closed: " + err.Error()
	}
	return "open " + strings.Fields(line + " ")[0]
}
