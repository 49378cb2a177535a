// Command edge is EmbArk's native hit front: a gRPC server in front of `embark serve` that
// answers repeated GetEmbedding and BatchGetEmbeddings HITs from its own memory and forwards
// everything else (proxy.go). A hit costs a Python gRPC server ~0.3 ms of CPU, most of it
// grpc.aio and the event loop (docs/performance.md, "the floor"); here it is a map lookup
// and a frame write.
//
//	EDGE_UPSTREAM=127.0.0.1:50051 EDGE_LISTEN=127.0.0.1:50050 edge/bin/edge
//
// Settings are environment variables, read once in main (settings.go).
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func main() {
	s, err := load(os.Getenv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "edge: %v\n", err)
		os.Exit(2)
	}
	if err := run(s); err != nil {
		slog.Error("edge stopped", "error", err)
		os.Exit(1)
	}
}

func run(s settings) error {
	conns := make([]*grpc.ClientConn, s.upstreamConns)
	for i := range conns {
		// A connection of its own each (no shared subchannel), so the kernel spreads them
		// over `embark serve`'s workers, which share one port.
		c, err := grpc.NewClient(s.upstream,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithNoProxy(),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(s.maxMessage),
				grpc.MaxCallSendMsgSize(s.maxMessage)),
		)
		if err != nil {
			return fmt.Errorf("upstream %s: %w", s.upstream, err)
		}
		defer c.Close()
		conns[i] = c
	}
	reg := prometheus.NewRegistry()
	vectors, catalog := newVectors(s.cacheBytes), &catalog{}
	p := &proxy{
		conns:    conns,
		vectors:  vectors,
		catalog:  catalog,
		metrics:  newMetrics(reg, vectors, catalog),
		maxBatch: s.maxBatch,
	}
	if s.token != "" {
		p.token = "Bearer " + s.token
	}
	opts := []grpc.ServerOption{
		grpc.UnknownServiceHandler(p.handle),
		grpc.ForceServerCodec(rawCodec{}),
		grpc.MaxRecvMsgSize(s.maxMessage),
		grpc.MaxSendMsgSize(s.maxMessage),
	}
	if s.tlsCert != "" {
		creds, err := credentials.NewServerTLSFromFile(s.tlsCert, s.tlsKey)
		if err != nil {
			return fmt.Errorf("EDGE_TLS_CERT_FILE / EDGE_TLS_KEY_FILE: %w", err)
		}
		opts = append(opts, grpc.Creds(creds))
	}
	server := grpc.NewServer(opts...)
	lis, err := net.Listen("tcp", s.listen)
	if err != nil {
		return fmt.Errorf("EDGE_LISTEN=%s: %w", s.listen, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go pollCatalog(ctx, p, s)
	if s.metricsListen != "" {
		ms := serveMetrics(s.metricsListen, reg)
		go func() {
			if err := ms.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				slog.Error("metrics port", "listen", s.metricsListen, "error", err)
			}
		}()
		defer ms.Close()
	}
	served := make(chan error, 1)
	go func() { served <- server.Serve(lis) }()
	slog.Info("edge serving", "listen", lis.Addr().String(), "upstream", s.upstream,
		"cache_bytes", s.cacheBytes, "connections", s.upstreamConns)
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	// Graceful: calls in flight finish (forwarded ones included) within the grace, then the
	// rest are cancelled; the same contract as `embark serve`'s shutdown.
	done := make(chan struct{})
	go func() { server.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(s.grace):
		server.Stop()
	}
	slog.Info("edge stopped")
	return nil
}

// pollCatalog keeps the catalog's revisions current: a model's revision changes only when
// EmbArk reloads its catalog (SIGHUP), so a poll every EDGE_CATALOG_POLL_S bounds how long
// the edge may still answer an old revision's vector after that reload.
func pollCatalog(ctx context.Context, p *proxy, s settings) {
	var failing error
	for {
		err := pollOnce(ctx, p, s)
		switch {
		case err == nil && failing != nil:
			slog.Info("catalog: upstream answers ListModels again")
		case err != nil && (failing == nil || err.Error() != failing.Error()):
			// Logged when the failure starts or changes, not every poll. Unless EmbArk refused
			// the edge's token, the revisions last seen stay: a model's revision cannot change
			// while EmbArk is unreachable.
			slog.Warn("catalog: ListModels failed; hits keep the last revisions seen",
				"error", err)
		}
		failing = err
		select {
		case <-ctx.Done():
			return
		case <-time.After(s.catalogPoll):
		}
	}
}

func pollOnce(ctx context.Context, p *proxy, s settings) error {
	ctx, cancel := context.WithTimeout(ctx, s.catalogPoll+time.Second)
	defer cancel()
	if p.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", p.token)
	}
	req, resp := []byte{}, []byte{}
	err := p.conn().Invoke(ctx, listModelsCall, &req, &resp, grpc.ForceCodec(rawCodec{}))
	if status.Code(err) == codes.Unauthenticated {
		// Without the token the edge could not check callers itself, so it answers nothing
		// from memory (everything reaches EmbArk, which refuses what it must). The revisions
		// seen before are dropped too: EmbArk may have restarted with a token it lacked then.
		p.catalog.set(map[string]string{})
		return fmt.Errorf("EmbArk requires a token: set EDGE_TOKEN to its EMBARK_TOKEN (%w)", err)
	}
	if err != nil {
		return err
	}
	revisions, ok := builtRevisions(resp)
	if !ok {
		return errors.New("ListModels answer is not a ListModelsResponse")
	}
	p.catalog.set(revisions)
	p.metrics.catalogAnswered()
	return nil
}
