// Command loadgen is the benchmarks' lean gRPC load generator: it sends prebuilt request
// frames and receives answers as bytes, never decoding them, so the CPU it takes from a
// two-core box is the transport's alone. ghz decodes every answer into a dynamic message,
// which for a 1,024-vector batch costs it more CPU than the edge spends serving it
// (bench/results/hotpath-edge-run1.json: ghz 46% of the machine, the edge and EmbArk 16%).
//
//	loadgen -target 127.0.0.1:50050 -method /embark.v1.EmbArk/BatchGetEmbeddings \
//	    -requests reqs.bin -concurrency 4 -connections 4 -duration 6s -out report.json
//
// reqs.bin holds the encoded requests, each preceded by its length as a protobuf varint; they
// are sent round robin. The report has the calls, errors by code, and latency percentiles.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = data
	return nil
}
func (rawCodec) Name() string { return "proto" }

type report struct {
	Calls     int            `json:"calls"`
	Errors    map[string]int `json:"errors"`
	Seconds   float64        `json:"seconds"`
	P50Ms     float64        `json:"p50_ms"`
	P90Ms     float64        `json:"p90_ms"`
	P99Ms     float64        `json:"p99_ms"`
	MaxMs     float64        `json:"max_ms"`
	RespBytes int64          `json:"response_bytes"`
}

func main() {
	target := flag.String("target", "", "host:port")
	method := flag.String("method", "", "full method, /package.Service/Method")
	path := flag.String("requests", "", "varint-length-prefixed request frames")
	concurrency := flag.Int("concurrency", 1, "calls in flight")
	connections := flag.Int("connections", 1, "HTTP/2 connections")
	duration := flag.Duration("duration", 0, "run this long (or -total calls)")
	total := flag.Int("total", 0, "calls in all (or -duration)")
	cpus := flag.Int("cpus", 1, "GOMAXPROCS")
	timeout := flag.Duration("timeout", 30*time.Second, "per call")
	out := flag.String("out", "", "report file (JSON)")
	flag.Parse()
	runtime.GOMAXPROCS(*cpus)
	if err := run(*target, *method, *path, *concurrency, *connections, *duration, *total,
		*timeout, *out); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func run(target, method, path string, concurrency, connections int, duration time.Duration,
	total int, timeout time.Duration, out string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var reqs [][]byte
	for len(data) > 0 {
		v, n := protowire.ConsumeBytes(data)
		if n < 0 {
			return errors.New("requests file: not varint-length-prefixed frames")
		}
		reqs, data = append(reqs, v), data[n:]
	}
	if len(reqs) == 0 || (duration == 0) == (total == 0) {
		return errors.New("need requests, and one of -duration or -total")
	}
	conns := make([]*grpc.ClientConn, connections)
	for i := range conns {
		c, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
		if err != nil {
			return err
		}
		defer c.Close()
		conns[i] = c
	}
	var next atomic.Int64
	var stop atomic.Bool
	var mu sync.Mutex
	var latencies []time.Duration
	errs := map[string]int{}
	var respBytes atomic.Int64
	var wg sync.WaitGroup
	started := time.Now()
	if duration > 0 {
		time.AfterFunc(duration, func() { stop.Store(true) })
	}
	for w := range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn := conns[w%len(conns)]
			var own []time.Duration
			for !stop.Load() {
				i := next.Add(1) - 1
				if total > 0 && i >= int64(total) {
					break
				}
				req, resp := reqs[i%int64(len(reqs))], []byte(nil)
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				t := time.Now()
				err := conn.Invoke(ctx, method, &req, &resp, grpc.ForceCodec(rawCodec{}))
				took := time.Since(t)
				cancel()
				if err != nil {
					mu.Lock()
					errs[status.Code(err).String()]++
					mu.Unlock()
					continue
				}
				respBytes.Add(int64(len(resp)))
				own = append(own, took)
			}
			mu.Lock()
			latencies = append(latencies, own...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(started)
	slices.Sort(latencies)
	ms := func(q float64) float64 {
		if len(latencies) == 0 {
			return 0
		}
		return float64(latencies[int(q*float64(len(latencies)-1))]) / 1e6
	}
	r := report{Calls: len(latencies), Errors: errs, Seconds: elapsed.Seconds(),
		P50Ms: ms(0.5), P90Ms: ms(0.9), P99Ms: ms(0.99), MaxMs: ms(1), RespBytes: respBytes.Load()}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return os.WriteFile(out, b, 0o644)
}
