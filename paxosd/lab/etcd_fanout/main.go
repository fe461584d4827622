// etcd-fanout: the etcd 3.4 side of `paxosctl bench --op txn` and `paxosctl bench fanout`,
// through etcd's own Go client (clientv3, gRPC), built from Debian packages by build.sh.
//
//	--op txn:   N closed-loop goroutines over M connections, each a 2-key txn: if
//	            mod(k1) < 2^62 then put k1 and k2 else get k1 (always true: the write path);
//	            only txns completing in the measured window count.
//	--op watch: W watchers on --endpoint (one member) on one prefix, spread over M
//	            connections (clientv3 multiplexes a connection's watches on one gRPC stream);
//	            16 goroutines put --rate puts/s on the prefix through --put-endpoint (open loop:
//	            a late put goes at once, none is skipped); latency = event received - that
//	            put's acknowledgement (one monotonic clock), for puts acknowledged in the window.
//
// Prints one line: RESULT {json}. Every loop is bounded by time; only 127.0.0.1 is contacted.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io/ioutil"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v3 "go.etcd.io/etcd/clientv3"
)

var t0 = time.Now()

func mono() int64 { return int64(time.Since(t0)) }

func dial(ep string) *v3.Client {
	c, err := v3.New(v3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial", ep, err)
		os.Exit(3)
	}
	return c
}

func pct(xs []int64, p float64) float64 {
	if len(xs) == 0 {
		return -1
	}
	i := int(float64(len(xs))*p/100+0.999999) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(xs) {
		i = len(xs) - 1
	}
	return float64(xs[i]) / 1000.0
}

func summary(lat []int64) map[string]float64 {
	sort.Slice(lat, func(a, b int) bool { return lat[a] < lat[b] })
	out := map[string]float64{"p50_us": pct(lat, 50), "p90_us": pct(lat, 90), "p99_us": pct(lat, 99), "p99_9_us": pct(lat, 99.9)}
	if len(lat) > 0 {
		out["max_us"] = float64(lat[len(lat)-1]) / 1000.0
	}
	return out
}

func rss(pid int) (float64, float64) {
	if pid <= 0 {
		return -1, -1
	}
	b, err := ioutil.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1, -1
	}
	var now, peak float64 = -1, -1
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == "VmRSS:" || f[0] == "VmHWM:") {
			kb, _ := strconv.ParseFloat(f[1], 64)
			if f[0] == "VmRSS:" {
				now = kb / 1024
			} else {
				peak = kb / 1024
			}
		}
	}
	return now, peak
}

func cpu(pid int) float64 {
	if pid <= 0 {
		return -1
	}
	b, err := ioutil.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndex(s, ")")+2:])
	u, _ := strconv.ParseFloat(f[11], 64)
	k, _ := strconv.ParseFloat(f[12], 64)
	return (u + k) / 100.0
}

func runTxn(eps []string, clients, conns int, warmup, duration float64, keys int, value string) map[string]interface{} {
	cs := make([]*v3.Client, conns)
	for i := range cs {
		cs[i] = dial(eps[i%len(eps)])
	}
	start := mono() + int64(warmup*1e9)
	end := start + int64(duration*1e9)
	var mu sync.Mutex
	var lat []int64
	var errs, failed int64
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c := cs[i%conns]
			seed := uint64(i*7919 + 1)
			next := func() int {
				seed = seed*6364136223846793005 + 1442695040888963407
				return int((seed >> 33) % uint64(keys))
			}
			var mine []int64
			for {
				ia := next()
				a := fmt.Sprintf("k%08d", ia)
				// a different key: a txn that writes one key twice is refused
				b := fmt.Sprintf("k%08d", (ia+1+next()%(keys-1))%keys)
				s := mono()
				if s >= end {
					break
				}
				resp, err := c.Txn(context.Background()).If(v3.Compare(v3.ModRevision(a), "<", int64(1)<<62)).
					Then(v3.OpPut(a, value), v3.OpPut(b, value)).Else(v3.OpGet(a)).Commit()
				e := mono()
				if e < start || e > end {
					continue
				}
				if err != nil {
					atomic.AddInt64(&errs, 1)
					continue
				}
				if !resp.Succeeded {
					atomic.AddInt64(&failed, 1)
				}
				mine = append(mine, e-s)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	out := map[string]interface{}{"op": "txn", "clients": clients, "conns": conns, "n": len(lat),
		"ops_s": float64(len(lat)) / duration, "errors": errs, "failed_compares": failed}
	for k, v := range summary(lat) {
		out[k] = v
	}
	return out
}

func runWatch(ep, putEp string, watchers, conns int, rate, warmup, duration float64, keys int, value string, pid int) map[string]interface{} {
	prefix := fmt.Sprintf("bench-watch/%d/", time.Now().UnixNano())
	pc := dial(putEp)
	r0, err := pc.Put(context.Background(), prefix+"start", "0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "put", err)
		os.Exit(3)
	}
	rev0 := r0.Header.Revision
	slots := int(rate*(warmup+duration)*1.2) + 1000
	acks := make([]int64, slots) // revision - rev0 -> ack time (atomic)
	cs := make([]*v3.Client, conns)
	for i := range cs {
		cs[i] = dial(ep)
	}
	rssBefore, _ := rss(pid)
	begin := mono() + int64(0.5e9) + int64(watchers)*int64(2e5) // time for every watch to be created
	start := begin + int64(warmup*1e9)
	end := start + int64(duration*1e9)
	total := int(rate * (warmup + duration))
	var mu sync.Mutex
	var lat []int64
	var received, counted, early int64
	var lastRev int64
	var done int32
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	created := make(chan struct{}, watchers)
	for w := 0; w < watchers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			ch := cs[w%conns].Watch(v3.WithRequireLeader(ctx), prefix, v3.WithPrefix(), v3.WithRev(rev0+1), v3.WithCreatedNotify())
			var mine []int64
			var pending [][2]int64
			for resp := range ch {
				if resp.Created {
					created <- struct{}{}
					continue
				}
				now := mono()
				for _, ev := range resp.Events {
					atomic.AddInt64(&received, 1)
					i := ev.Kv.ModRevision - rev0
					if i < 0 || int(i) >= slots {
						continue
					}
					a := atomic.LoadInt64(&acks[i])
					if a == 0 {
						pending = append(pending, [2]int64{i, now})
					} else if a >= start && a <= end {
						mine = append(mine, now-a)
					}
				}
				if atomic.LoadInt32(&done) == 1 && len(resp.Events) > 0 && resp.Events[len(resp.Events)-1].Kv.ModRevision >= atomic.LoadInt64(&lastRev) {
					break
				}
			}
			for _, p := range pending {
				a := atomic.LoadInt64(&acks[p[0]])
				if a >= start && a <= end {
					mine = append(mine, 0)
					atomic.AddInt64(&early, 1)
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			counted += int64(len(mine))
			mu.Unlock()
		}(w)
	}
	deadline := time.After(120 * time.Second)
	for i := 0; i < watchers; i++ {
		select {
		case <-created:
		case <-deadline:
			fmt.Fprintln(os.Stderr, "watchers not created in 120 s")
			os.Exit(3)
		}
	}
	for mono() < begin {
		time.Sleep(time.Millisecond)
	}
	cpu0 := cpu(pid)
	var pwg sync.WaitGroup
	var perrs, acked int64
	var maxRev int64
	for g := 0; g < 16; g++ {
		pwg.Add(1)
		go func(g int) {
			defer pwg.Done()
			for k := g; k < total; k += 16 {
				due := begin + int64(float64(k)/rate*1e9)
				if d := due - mono(); d > 0 {
					time.Sleep(time.Duration(d))
				}
				r, err := pc.Put(context.Background(), fmt.Sprintf("%s%06d", prefix, k%keys), value)
				now := mono()
				if err != nil {
					atomic.AddInt64(&perrs, 1)
					continue
				}
				atomic.AddInt64(&acked, 1)
				i := r.Header.Revision - rev0
				if i >= 0 && int(i) < slots {
					atomic.StoreInt64(&acks[i], now)
				}
				for {
					m := atomic.LoadInt64(&maxRev)
					if r.Header.Revision <= m || atomic.CompareAndSwapInt64(&maxRev, m, r.Header.Revision) {
						break
					}
				}
			}
		}(g)
	}
	pwg.Wait()
	putSeconds := float64(mono()-begin) / 1e9
	cpu1 := cpu(pid)
	atomic.StoreInt64(&lastRev, atomic.LoadInt64(&maxRev))
	atomic.StoreInt32(&done, 1)
	// one more put so that a watcher blocked after the last revision sees the stop
	pc.Put(context.Background(), prefix+"end", "0")
	waitDone := make(chan struct{})
	go func() { wg.Wait(); close(waitDone) }()
	select {
	case <-waitDone:
	case <-time.After(30 * time.Second):
		cancel()
		<-waitDone
	}
	cancel()
	rssAfter, rssPeak := rss(pid)
	out := map[string]interface{}{"op": "watch", "watchers": watchers, "conns": conns, "puts_per_s": rate,
		"expected_in_window": int64(rate*duration) * int64(watchers), "delivered_in_window": counted,
		"received_total": received, "before_ack": early, "put_errors": perrs,
		"rss_mb_before": rssBefore, "rss_mb_after": rssAfter, "rss_peak_mb": rssPeak,
		"cpu_s": cpu1 - cpu0, "n": len(lat),
		"puts_per_s_achieved": float64(atomic.LoadInt64(&acked)) / putSeconds}
	for k, v := range summary(lat) {
		out[k] = v
	}
	return out
}

func main() {
	op := flag.String("op", "txn", "txn | watch")
	endpoints := flag.String("endpoints", "", "txn: client URLs (round robin over connections)")
	endpoint := flag.String("endpoint", "", "watch: the member the watchers use")
	putEndpoint := flag.String("put-endpoint", "", "watch: the member the puts go to (the leader)")
	clients := flag.Int("clients", 64, "txn: closed-loop goroutines")
	conns := flag.Int("conns", 8, "gRPC connections")
	watchers := flag.Int("watchers", 1000, "watch: watchers")
	rate := flag.Float64("rate", 1000, "watch: puts per second")
	duration := flag.Float64("duration", 10, "measured seconds")
	warmup := flag.Float64("warmup", 1, "seconds before the measured window")
	keys := flag.Int("keys", 10000, "key space")
	valueSize := flag.Int("value-size", 100, "value bytes")
	pid := flag.Int("pid", 0, "watch: the watched member's pid, for RSS and CPU")
	flag.Parse()
	if *duration <= 0 || *duration > 3600 || *conns < 1 || *clients < 1 || *watchers < 1 || *rate <= 0 || *rate > 100000 {
		fmt.Fprintln(os.Stderr, "bad arguments")
		os.Exit(2)
	}
	value := strings.Repeat("v", *valueSize)
	var out map[string]interface{}
	switch *op {
	case "txn":
		out = runTxn(strings.Split(*endpoints, ","), *clients, *conns, *warmup, *duration, *keys, value)
	case "watch":
		out = runWatch(*endpoint, *putEndpoint, *watchers, *conns, *rate, *warmup, *duration, *keys, value, *pid)
	default:
		fmt.Fprintln(os.Stderr, "--op is txn or watch")
		os.Exit(2)
	}
	b, _ := json.Marshal(out)
	fmt.Printf("RESULT %s\n", b)
}
