// Command workload is the test workload of the sandbox conformance suite. It
// is built static so it runs in every sandbox. It greets on stdout and
// stderr, then does what argv[1] says:
//
//	exit <code>         print its environment, a long line and an
//	                    unterminated last line, then exit with code
//	echo <subject>      answer requests on subject over NATS_URL until SIGTERM
//	ignore-term         ignore SIGTERM and run until killed
//	eat <MiB>           take and touch memory, MiB at a time, up to <MiB> in
//	                    all, saying how much every 16 MiB; then exit 0
//	cpus                print "cpus <n>", the CPUs it may run on; exit 0
//	clock <n>           print "clocksource <name>" (the kernel's), then
//	                    "now <Unix ns>" once a second, n times; exit 0
//	flood <n>           print n lines of 100 bytes as fast as it can, then
//	                    "flooded <n>"; exit 0
package main

import (
	"bufio"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
)

func main() {
	fmt.Println("hello stdout")
	fmt.Fprintln(os.Stderr, "hello stderr")
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: workload exit <code> | echo <subject> | ignore-term | eat <MiB> | cpus | clock <n> | flood <n>")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "exit":
		code, _ := strconv.Atoi(arg(2))
		env := os.Environ()
		sort.Strings(env)
		for _, kv := range env {
			fmt.Println("env " + kv)
		}
		fmt.Println(strings.Repeat("x", 20000))
		fmt.Print("last words")
		os.Exit(code)
	case "echo":
		echo(arg(2))
	case "eat":
		eat(arg(2))
	case "cpus":
		fmt.Printf("cpus %d\n", runtime.NumCPU())
	case "clock":
		n, _ := strconv.Atoi(arg(2))
		src, _ := os.ReadFile("/sys/devices/system/clocksource/clocksource0/current_clocksource")
		fmt.Printf("clocksource %s\n", strings.TrimSpace(string(src)))
		for i := 0; i < n; i++ {
			if i > 0 {
				time.Sleep(time.Second)
			}
			fmt.Printf("now %d\n", time.Now().UnixNano())
		}
	case "flood":
		n, _ := strconv.Atoi(arg(2))
		w := bufio.NewWriterSize(os.Stdout, 64<<10)
		for i := range n {
			fmt.Fprintf(w, "line %8d %s\n", i, strings.Repeat("x", 85))
		}
		w.Flush()
		fmt.Printf("flooded %d\n", n)
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ready")
		for {
			time.Sleep(time.Hour) // select{} would be a deadlock the runtime kills
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
}

func echo(subject string) {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	nc, err := nats.Connect(os.Getenv("NATS_URL"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "nats:", err)
		os.Exit(3)
	}
	_, err = nc.Subscribe(subject, func(m *nats.Msg) { _ = m.Respond(append([]byte("echo: "), m.Data...)) })
	if err == nil {
		err = nc.Flush()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "subscribe:", err)
		os.Exit(3)
	}
	fmt.Println("ready")
	<-term
	fmt.Println("terminating")
	_ = nc.Drain()
}

// held keeps what eat took reachable, so the collector cannot free it.
var held [][]byte

func eat(limit string) {
	mib, err := strconv.Atoi(limit)
	if err != nil {
		fmt.Fprintln(os.Stderr, "eat: MiB:", err)
		os.Exit(2)
	}
	for i := 1; i <= mib; i++ {
		b := make([]byte, 1<<20)
		for j := 0; j < len(b); j += 4096 {
			b[j] = 1
		}
		held = append(held, b)
		if i%16 == 0 {
			fmt.Println("ate", i, "MiB")
		}
	}
}

func arg(i int) string {
	if i < len(os.Args) {
		return os.Args[i]
	}
	return ""
}
