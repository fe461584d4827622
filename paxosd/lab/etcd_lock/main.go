// etcd-lock-bench: the etcd 3.4 side of `paxosctl bench --op lock`.
//
// N contenders, each with its own clientv3 client and one concurrency.Session (a lease kept
// alive by the client), acquire and release one concurrency.Mutex in a closed loop for a
// warm-up plus a measured window. It prints one line, `RESULT {json}`, with the same fields
// as paxosd's report: round trips per second, acquire latency percentiles (from asking to
// holding), and a check that the revision each holder got its lock at only grows (a lower one
// is two holders at once). Build (Debian packages only, GOPATH mode, as the anchors'
// etcd-go/build.sh does):
//
//	GO111MODULE=off GOPATH=/tmp/gopath:/usr/share/gocode GOCACHE=/tmp/gocache \
//	    go build -o /tmp/etcd-lock-bench paxosd/lab/etcd_lock/main.go
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
)

type result struct {
	Contenders  int      `json:"contenders"`
	DurationS   float64  `json:"duration_s"`
	RoundTrips  int      `json:"round_trips"`
	RoundTripsS float64  `json:"round_trips_s"`
	P50Ms       float64  `json:"p50_ms"`
	P90Ms       float64  `json:"p90_ms"`
	P99Ms       float64  `json:"p99_ms"`
	Violations  int      `json:"violations"`
	Errors      []string `json:"errors"`
}

func pct(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q * float64(len(sorted)))
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:2379", "comma-separated client URLs")
	contenders := flag.Int("contenders", 16, "concurrent contenders")
	duration := flag.Float64("duration", 10, "measured seconds")
	warmup := flag.Float64("warmup", 1, "seconds before measuring")
	ttl := flag.Int("ttl", 10, "each session's lease TTL, seconds")
	name := flag.String("name", "bench/lock", "the lock's prefix")
	flag.Parse()
	eps := strings.Split(*endpoints, ",")

	start := time.Now()
	measureFrom := start.Add(time.Duration(*warmup * float64(time.Second)))
	stopAt := measureFrom.Add(time.Duration(*duration * float64(time.Second)))
	// Bounded: the whole run cannot outlive its window by more than a minute.
	watchdog := time.AfterFunc(time.Until(stopAt)+time.Minute, func() {
		fmt.Fprintln(os.Stderr, "etcd-lock-bench: watchdog: still running a minute after the window")
		os.Exit(3)
	})
	defer watchdog.Stop()

	var mu sync.Mutex
	var lastRev int64
	var lat []float64
	res := result{Contenders: *contenders, DurationS: *duration, Errors: []string{}}
	var wg sync.WaitGroup
	for i := 0; i < *contenders; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fail := func(err error) {
				mu.Lock()
				if len(res.Errors) < 10 {
					res.Errors = append(res.Errors, err.Error())
				}
				mu.Unlock()
			}
			cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
			if err != nil {
				fail(err)
				return
			}
			defer cli.Close()
			s, err := concurrency.NewSession(cli, concurrency.WithTTL(*ttl))
			if err != nil {
				fail(err)
				return
			}
			defer s.Close()
			for time.Now().Before(stopAt) {
				m := concurrency.NewMutex(s, *name)
				asked := time.Now()
				if err := m.Lock(context.Background()); err != nil {
					fail(err)
					return
				}
				held := time.Now()
				rev := m.Header().Revision
				mu.Lock()
				if rev <= lastRev {
					res.Violations++
				}
				lastRev = rev
				mu.Unlock()
				if err := m.Unlock(context.Background()); err != nil {
					fail(err)
					return
				}
				if !asked.Before(measureFrom) && !time.Now().After(stopAt) {
					mu.Lock()
					res.RoundTrips++
					lat = append(lat, float64(held.Sub(asked).Microseconds())/1000)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	sort.Float64s(lat)
	res.RoundTripsS = float64(res.RoundTrips) / *duration
	res.P50Ms, res.P90Ms, res.P99Ms = pct(lat, 0.5), pct(lat, 0.9), pct(lat, 0.99)
	out, _ := json.Marshal(res)
	fmt.Printf("RESULT %s\n", out)
}
