package main

import (
	"net"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// An EmbArk that answers ListModels with one built model until it starts to require a
// token (a restart with EMBARK_TOKEN set).
func TestATokenRefusalDropsTheRevisionsSeenBefore(t *testing.T) {
	var refuse atomic.Bool
	models := msg(nil, listModels,
		varint(str(str(nil, infoName, "m"), infoRevision, "r1"), infoBuilt, 1))
	server := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}),
		grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
			var req []byte
			if err := ss.RecvMsg(&req); err != nil {
				return err
			}
			if refuse.Load() {
				return status.Error(codes.Unauthenticated, unauthenticated)
			}
			return ss.SendMsg(&models)
		}))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = server.Serve(lis) }()
	defer server.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	v, c := newVectors(0), &catalog{}
	p := &proxy{conns: []*grpc.ClientConn{conn}, vectors: v, catalog: c,
		metrics: newMetrics(prometheus.NewRegistry(), v, c)}
	s, _ := load(func(string) string { return "" })
	if err := pollOnce(t.Context(), p, s); err != nil {
		t.Fatal(err)
	}
	if r, ok := c.revision("m"); !ok || r != "r1" {
		t.Fatalf("after the first poll: %q, %v", r, ok)
	}
	refuse.Store(true)
	if err := pollOnce(t.Context(), p, s); err == nil {
		t.Fatal("a refused poll reported no error")
	}
	if _, ok := c.revision("m"); ok {
		t.Fatal("a refused poll kept the revisions seen before: hits would skip EmbArk's token")
	}
}
