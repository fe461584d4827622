// etcd-lease-bench: the etcd 3.4 side of `paxosctl bench --leases N --compare-etcd`.
//
// The same two runs as paxosd's bench (paxosd/lab/bench_leases.py), on one etcd cluster:
//  1. a closed-loop put load alone: --clients goroutines over --conns gRPC connections, random
//     keys of --keys, for a warm-up plus a measured window;
//  2. --leases leases of --ttl seconds granted, a key put on each (a service registration),
//     all kept alive with clientv3's KeepAlive (the client's lessor sends each lease's
//     keep-alive every TTL/3 over one stream per client) from --keepers clients, and after one
//     TTL/3 the same put load again.
//
// A keep-alive is late when it is acknowledged more than TTL/2 after the lease's previous
// acknowledgement (paxosd's rule too); failed when a lease's keep-alive channel closes while
// it is kept. Leases lost: leases granted and not in the cluster's lease list at the end.
// Server CPU: user+system seconds of --pids over each measured window. It prints one line,
// `RESULT {json}`. Build (Debian packages only, GOPATH mode): ./build.sh next to this file.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/clientv3"
)

type run struct {
	OpsS       float64 `json:"ops_s"`
	Ops        int     `json:"ops"`
	P50Us      float64 `json:"p50_us"`
	P99Us      float64 `json:"p99_us"`
	P999Us     float64 `json:"p999_us"`
	Errors     int     `json:"errors"`
	ServerCPUS float64 `json:"server_cpu_s"`
}

type keepalives struct {
	AskedPerS float64 `json:"asked_per_s"`
	AckedPerS float64 `json:"acked_per_s"`
	Late      int64   `json:"late"`
	Failed    int64   `json:"failed"`
	MaxGapS   float64 `json:"max_gap_s"`
}

type result struct {
	Leases         int        `json:"leases"`
	TTLS           int        `json:"ttl_s"`
	Clients        int        `json:"clients"`
	DurationS      float64    `json:"duration_s"`
	WithoutLeases  run        `json:"without_leases"`
	WithLeases     run        `json:"with_leases"`
	Keepalives     keepalives `json:"keepalives"`
	LeasesLost     int        `json:"leases_lost"`
	RegistrationsS float64    `json:"registrations_s"`
	Errors         []string   `json:"errors"`
}

var (
	errMu sync.Mutex
	res   = result{Errors: []string{}}
)

func fail(err error) {
	errMu.Lock()
	if len(res.Errors) < 10 {
		res.Errors = append(res.Errors, err.Error())
	}
	errMu.Unlock()
}

func pct(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return -1
	}
	i := int(q * float64(len(sorted)))
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

// cpuS: user+system seconds of the processes, from /proc (clock ticks of 1/100 s).
func cpuS(pids []int) float64 {
	total := 0.0
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseFloat(f[11], 64)
		k, _ := strconv.ParseFloat(f[12], 64)
		total += (u + k) / 100
	}
	return total
}

func putLoad(clis []*clientv3.Client, clients, keys int, value string, warmup, duration float64,
	pids []int) run {
	start := time.Now()
	measureFrom := start.Add(time.Duration(warmup * float64(time.Second)))
	stopAt := measureFrom.Add(time.Duration(duration * float64(time.Second)))
	var mu sync.Mutex
	var lat []float64
	errs := 0
	var cpu0 float64
	cpuTaken := make(chan struct{})
	go func() {
		time.Sleep(time.Until(measureFrom))
		cpu0 = cpuS(pids)
		close(cpuTaken)
	}()
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			cli := clis[i%len(clis)]
			rnd := rand.New(rand.NewSource(int64(i) + 1))
			var mine []float64
			myErrs := 0
			for {
				t0 := time.Now()
				if !t0.Before(stopAt) {
					break
				}
				k := fmt.Sprintf("bench/k%08d", rnd.Intn(keys))
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := cli.Put(ctx, k, value)
				cancel()
				t1 := time.Now()
				if t1.Before(measureFrom) || t1.After(stopAt) {
					continue
				}
				if err != nil {
					myErrs++
					continue
				}
				mine = append(mine, float64(t1.Sub(t0).Microseconds()))
			}
			mu.Lock()
			lat = append(lat, mine...)
			errs += myErrs
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	<-cpuTaken
	cpu1 := cpuS(pids)
	sort.Float64s(lat)
	return run{
		OpsS: float64(len(lat)) / duration, Ops: len(lat),
		P50Us: pct(lat, 0.5), P99Us: pct(lat, 0.99), P999Us: pct(lat, 0.999),
		Errors: errs, ServerCPUS: cpu1 - cpu0,
	}
}

func newClients(eps []string, n int) []*clientv3.Client {
	out := make([]*clientv3.Client, 0, n)
	for i := 0; i < n; i++ {
		cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
		if err != nil {
			fmt.Fprintln(os.Stderr, "etcd-lease-bench:", err)
			os.Exit(3)
		}
		out = append(out, cli)
	}
	return out
}

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:2379", "comma-separated client URLs")
	clients := flag.Int("clients", 64, "closed-loop put clients")
	conns := flag.Int("conns", 64, "gRPC connections the put clients share")
	keys := flag.Int("keys", 10000, "keys the puts choose from, uniformly")
	valueSize := flag.Int("value-size", 100, "value bytes")
	duration := flag.Float64("duration", 8, "measured seconds of each put run")
	warmup := flag.Float64("warmup", 1, "seconds of each put run before measuring")
	leases := flag.Int("leases", 10000, "leases granted and kept alive")
	ttl := flag.Int("ttl", 10, "each lease's TTL, seconds")
	keepers := flag.Int("keepers", 4, "clients the keep-alives are spread over")
	pidList := flag.String("pids", "", "comma-separated server pids, for server CPU")
	flag.Parse()
	eps := strings.Split(*endpoints, ",")
	var pids []int
	for _, p := range strings.Split(*pidList, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(p)); err == nil {
			pids = append(pids, n)
		}
	}
	// Bounded: the whole run cannot outlive its windows and the grants by more than minutes.
	limit := time.Duration(2*(*warmup+*duration)+float64(*ttl)+300) * time.Second
	watchdog := time.AfterFunc(limit, func() {
		fmt.Fprintln(os.Stderr, "etcd-lease-bench: watchdog: the run took too long")
		os.Exit(3)
	})
	defer watchdog.Stop()
	res.Leases, res.TTLS, res.Clients, res.DurationS = *leases, *ttl, *clients, *duration
	value := strings.Repeat("v", *valueSize)
	putClis := newClients(eps, *conns)

	// 1. The put load alone.
	res.WithoutLeases = putLoad(putClis, *clients, *keys, value, *warmup, *duration, pids)

	// 2. Registrations: a lease and a key each, 256 at a time, each kept alive from its
	// registration on (a service keeps its lease alive once registered).
	keepClis := newClients(eps, *keepers)
	ids := make([]clientv3.LeaseID, *leases)
	period := time.Duration(*ttl) * time.Second / 3
	var acked, late, failed int64
	var maxGapNs int64
	ctx, stopKeeping := context.WithCancel(context.Background())
	var kwg sync.WaitGroup
	// clientv3 sends a lease's first keep-alive when KeepAlive is called, then one every
	// TTL/3 after each answer. Lease i's first goes at its slot, i/N of a period after the
	// registrations began, or at once if it was registered later than that: spread evenly
	// over TTL/3 as paxosd's keeper does, so the leader sees a steady rate, not bursts.
	keep := func(i int, id clientv3.LeaseID, slot time.Time, granted time.Time) {
		defer kwg.Done()
		time.Sleep(time.Until(slot))
		ch, err := keepClis[i%len(keepClis)].KeepAlive(ctx, id)
		if err != nil {
			fail(err)
			atomic.AddInt64(&failed, 1)
			return
		}
		last := granted
		for range ch {
			now := time.Now()
			gap := now.Sub(last)
			last = now
			atomic.AddInt64(&acked, 1)
			if gap > time.Duration(*ttl)*time.Second/2 {
				atomic.AddInt64(&late, 1)
			}
			for {
				m := atomic.LoadInt64(&maxGapNs)
				if int64(gap) <= m || atomic.CompareAndSwapInt64(&maxGapNs, m, int64(gap)) {
					break
				}
			}
		}
		if ctx.Err() == nil {
			atomic.AddInt64(&failed, 1) // the channel closed while the lease was kept
		}
	}
	t0 := time.Now()
	step := period / time.Duration(*leases)
	var next int64 = -1
	var wg sync.WaitGroup
	for w := 0; w < 256; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(atomic.AddInt64(&next, 1))
				if i >= *leases {
					return
				}
				cli := keepClis[i%len(keepClis)]
				rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				asked := time.Now()
				g, err := cli.Grant(rctx, int64(*ttl))
				if err == nil {
					ids[i] = g.ID
					_, err = cli.Put(rctx, fmt.Sprintf("bench/registry/%06d", i), "10.0.0.1:8080",
						clientv3.WithLease(g.ID))
				}
				cancel()
				if err != nil {
					fail(err)
				}
				if ids[i] != 0 {
					kwg.Add(1)
					go keep(i, ids[i], t0.Add(time.Duration(i)*step), asked)
				}
			}
		}()
	}
	wg.Wait()
	res.RegistrationsS = time.Since(t0).Seconds()
	time.Sleep(period) // every lease has had its first keep-alive
	a0, l0, f0 := atomic.LoadInt64(&acked), atomic.LoadInt64(&late), atomic.LoadInt64(&failed)
	m0 := time.Now()
	res.WithLeases = putLoad(putClis, *clients, *keys, value, *warmup, *duration, pids)
	window := time.Since(m0).Seconds()
	res.Keepalives = keepalives{
		AskedPerS: float64(*leases) / period.Seconds(),
		AckedPerS: float64(atomic.LoadInt64(&acked)-a0) / window,
		Late:      atomic.LoadInt64(&late) - l0,
		Failed:    atomic.LoadInt64(&failed) - f0,
		MaxGapS:   float64(atomic.LoadInt64(&maxGapNs)) / 1e9,
	}
	stopKeeping()
	kwg.Wait()

	// Leases lost: granted and not in the cluster's list now.
	lctx, lcancel := context.WithTimeout(context.Background(), 10*time.Second)
	list, err := keepClis[0].Leases(lctx)
	lcancel()
	if err != nil {
		fail(err)
		res.LeasesLost = -1
	} else {
		alive := make(map[clientv3.LeaseID]bool, len(list.Leases))
		for _, l := range list.Leases {
			alive[l.ID] = true
		}
		for _, id := range ids {
			if !alive[id] {
				res.LeasesLost++
			}
		}
	}
	for _, c := range append(putClis, keepClis...) {
		c.Close()
	}
	out, _ := json.Marshal(res)
	fmt.Printf("RESULT %s\n", out)
}
