// Command gokubelet is the receiving end of devplug's latency benchmarks: a kubelet
// device-manager stand-in built on grpc-go, the library kubelet itself uses, so that the
// measured latency is not inflated by a Python receiver.
//
//	gokubelet PLUGIN_DIR
//
// It speaks the line protocol of tests/kubelet_standin.py's main(): one JSON object per line
// on stdout, commands one per line on stdin. Timestamps (t_ns) are CLOCK_MONOTONIC in ns, the
// clock of Python's time.perf_counter_ns(), so they compare with other processes' stamps.
//
// Events:  ready {socket} · register {resource, endpoint, t_ns} · list {resource, t_ns,
// devices: [[id, health], ...]} · end {resource, code} · restarted {t_ns} · clock {t_ns} ·
// allocate {resource, t_ns_sent, t_ns, response | code, message} · error {message}.
// Commands: quit · restart · clock · watch RESOURCE SOCKET (ListAndWatch without a
// registration) · allocate RESOURCE ID[,ID...] (one container).
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
)

var outMu sync.Mutex

// emit writes one JSON line with a single write(2), so lines never interleave.
func emit(v interface{}) {
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(map[string]string{"event": "error", "message": err.Error()})
	}
	outMu.Lock()
	os.Stdout.Write(append(b, '\n'))
	outMu.Unlock()
}

func emitError(format string, args ...interface{}) {
	emit(map[string]string{"event": "error", "message": fmt.Sprintf(format, args...)})
}

func main() {
	if len(os.Args) != 2 || strings.HasPrefix(os.Args[1], "-") {
		fmt.Fprintln(os.Stderr, "usage: gokubelet PLUGIN_DIR   (commands on stdin: quit, restart, clock, watch R SOCK, allocate R IDS)")
		os.Exit(2)
	}
	k, err := newKubelet(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "gokubelet:", err)
		os.Exit(1)
	}
	emit(map[string]string{"event": "ready", "socket": k.socketPath()})
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		switch {
		case f[0] == "quit":
			k.stop()
			return
		case f[0] == "restart":
			if err := k.restart(); err != nil {
				emitError("restart: %v", err)
				continue
			}
			emit(map[string]interface{}{"event": "restarted", "t_ns": monoNS()})
		case f[0] == "clock":
			emit(map[string]interface{}{"event": "clock", "t_ns": monoNS()})
		case f[0] == "watch" && len(f) == 3:
			go k.watch(f[1], f[2])
		case f[0] == "allocate" && len(f) == 3:
			go k.allocate(f[1], strings.Split(f[2], ","))
		default:
			emitError("unknown command %q", in.Text())
		}
	}
	k.stop() // stdin closed: the parent is gone
}
