package main

// The edge's settings: environment variables (EDGE_ prefix, like EMBARK_, KFC_ and RETINA_),
// read once in main and passed down; every default says why it is what it is.

import (
	"fmt"
	"runtime"
	"strconv"
	"time"
)

type settings struct {
	// Where callers connect: 50050, beside EmbArk's 50051 (Retina has 50052, KFC's health
	// 50053). Loopback by default, like EmbArk: exposing a port is a deployment decision.
	listen string
	// `embark serve`'s gRPC address. The edge reaches it in plaintext, so keep it on the
	// same host (or a private network); the edge itself can serve TLS.
	upstream string
	// Bytes of stored vectors held in memory (0: cache nothing and forward every call).
	// 256 MiB, EmbArk's own default: ~150k 384-d float32 vectors.
	cacheBytes uint64
	// How long after an EmbArk catalog reload the edge may still answer the old revision
	// of a reloaded model. One ListModels call a second is nothing to EmbArk.
	catalogPoll time.Duration
	// Connections to EmbArk. One per core: the kernel spreads connections, not calls, over
	// `embark serve`'s workers (EMBARK_WORKERS, default the core count).
	upstreamConns int
	// The largest request or answer, in bytes: 16 MiB, EmbArk's own EMBARK_MAX_MESSAGE_BYTES
	// default (set the two together), so the edge refuses what EmbArk would refuse, itself.
	maxMessage int
	// The most inputs a batch the edge answers from memory: 1,024, EmbArk's EMBARK_MAX_BATCH
	// default (set the two together). A larger batch is forwarded, so it gets EmbArk's own
	// INVALID_ARGUMENT even when every one of its inputs is held.
	maxBatch int
	// Prometheus scrape address ("": none).
	metricsListen string
	// EmbArk's bearer token, when it requires one: the edge then requires it too, on every
	// method but health and reflection, and uses it for its own ListModels calls.
	token string
	// TLS for callers (both files, or neither).
	tlsCert, tlsKey string
	// How long calls in flight may finish after SIGTERM; below Nomad's kill_timeout and at
	// most EmbArk's own shutdown grace, so a forwarded call never outlives its upstream.
	grace time.Duration
}

func load(env func(string) string) (settings, error) {
	s := settings{
		listen:        or(env("EDGE_LISTEN"), "127.0.0.1:50050"),
		upstream:      or(env("EDGE_UPSTREAM"), "127.0.0.1:50051"),
		metricsListen: env("EDGE_METRICS_LISTEN"),
		token:         env("EDGE_TOKEN"),
		tlsCert:       env("EDGE_TLS_CERT_FILE"),
		tlsKey:        env("EDGE_TLS_KEY_FILE"),
	}
	var err error
	if s.cacheBytes, err = parseUint(env, "EDGE_CACHE_BYTES", 256<<20); err != nil {
		return s, err
	}
	if s.catalogPoll, err = seconds(env, "EDGE_CATALOG_POLL_S", 1, 0.05); err != nil {
		return s, err
	}
	if s.grace, err = seconds(env, "EDGE_SHUTDOWN_GRACE_S", 10, 0); err != nil {
		return s, err
	}
	size, err := parseUint(env, "EDGE_MAX_MESSAGE_BYTES", 16<<20)
	if err != nil {
		return s, err
	}
	if size < 1<<10 || size > 1<<30 {
		return s, fmt.Errorf("EDGE_MAX_MESSAGE_BYTES=%d: must be 1 KiB to 1 GiB", size)
	}
	s.maxMessage = int(size)
	batch, err := parseUint(env, "EDGE_MAX_BATCH", 1024)
	if err != nil {
		return s, err
	}
	if batch < 1 || batch > 1<<20 {
		return s, fmt.Errorf("EDGE_MAX_BATCH=%d: must be 1 to 1048576", batch)
	}
	s.maxBatch = int(batch)
	conns, err := parseUint(env, "EDGE_UPSTREAM_CONNECTIONS", uint64(runtime.NumCPU()))
	if err != nil {
		return s, err
	}
	if conns < 1 || conns > 256 {
		return s, fmt.Errorf("EDGE_UPSTREAM_CONNECTIONS=%d: must be 1-256", conns)
	}
	s.upstreamConns = int(conns)
	if (s.tlsCert == "") != (s.tlsKey == "") {
		return s, fmt.Errorf("EDGE_TLS_CERT_FILE and EDGE_TLS_KEY_FILE go together: set both or neither")
	}
	return s, nil
}

func or(v, fallback string) string {
	if v == "" {
		return fallback
	}
	return v
}

func parseUint(env func(string) string, name string, fallback uint64) (uint64, error) {
	v := env(name)
	if v == "" {
		return fallback, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: not a whole number >= 0", name, v)
	}
	return n, nil
}

func seconds(env func(string) string, name string, fallback, least float64) (time.Duration, error) {
	v, f := env(name), fallback
	if v != "" {
		var err error
		if f, err = strconv.ParseFloat(v, 64); err != nil || f < least || f > 3600 {
			return 0, fmt.Errorf("%s=%q: seconds between %g and 3600", name, v, least)
		}
	}
	return time.Duration(f * float64(time.Second)), nil
}
