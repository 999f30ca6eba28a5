package main

// CLOCK_MONOTONIC nanoseconds without a system call per stamp. Go's monotonic reading
// (time.Since) is runtime nanotime, which on Linux is CLOCK_MONOTONIC through the vDSO but
// with an unexported base; one calibration against clock_gettime(2) at start gives that base.
// Python's time.perf_counter_ns() is CLOCK_MONOTONIC too, so stamps compare across processes.

import (
	"time"

	"golang.org/x/sys/unix"
)

var (
	clockRef    = time.Now()
	clockOffset = calibrate()
)

// calibrate returns CLOCK_MONOTONIC − time.Since(clockRef), from the tightest of 64 brackets.
func calibrate() int64 {
	best, offset := int64(-1), int64(0)
	for i := 0; i < 64; i++ {
		var ts unix.Timespec
		a := int64(time.Since(clockRef))
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
			panic(err)
		}
		b := int64(time.Since(clockRef))
		if width := b - a; best < 0 || width < best {
			best, offset = width, ts.Nano()-(a+b)/2
		}
	}
	return offset
}

// monoNS is CLOCK_MONOTONIC in ns (the value of Python's time.perf_counter_ns() now).
func monoNS() int64 { return clockOffset + int64(time.Since(clockRef)) }
