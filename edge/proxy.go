package main

// The edge's gRPC handler: every call on every method arrives here as raw frames. GetEmbedding
// and BatchGetEmbeddings are answered from memory when every input is a cached HIT of the
// model's current revision; everything else (a miss, a batch with one miss, Categorize,
// FindSimilar, health, reflection) is forwarded to `embark serve` unchanged, with its metadata
// and deadline, and its answer, status and trailers come back unchanged. So EmbArk's semantics
// (keys, OOV and PENDING, enqueueing, read-through, errors) live in one place, the Python
// service, and the edge only repeats answers that service already gave and that cannot change.

import (
	"context"
	"crypto/subtle"
	"errors"
	"io"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const (
	service         = "/embark.v1.EmbArk/"
	getMethod       = service + "GetEmbedding"
	batchMethod     = service + "BatchGetEmbeddings"
	listModelsCall  = service + "ListModels"
	unauthenticated = "missing or invalid token" // embark_core/interceptors.py's message
)

// rawCodec passes frames through as bytes: the edge never decodes what it forwards.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, status.Errorf(codes.Internal, "edge: cannot send %T", v)
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return status.Errorf(codes.Internal, "edge: cannot receive into %T", v)
	}
	*b = data
	return nil
}

func (rawCodec) Name() string { return "proto" } // what goes over the wire is still protobuf

type proxy struct {
	conns   []*grpc.ClientConn // to upstream; calls take them in turn
	next    atomic.Uint64
	vectors *vectors
	catalog *catalog
	token   string // "Bearer <token>", or "" when the edge asks for none
	// maxBatch: larger batches are forwarded for EmbArk to refuse (settings.go).
	maxBatch int
	metrics  *metrics
}

func (p *proxy) conn() *grpc.ClientConn {
	return p.conns[p.next.Add(1)%uint64(len(p.conns))]
}

// handle is the server's only handler (grpc.UnknownServiceHandler).
func (p *proxy) handle(_ any, ss grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(ss)
	if p.token != "" && !open(method) && !p.authorized(ss.Context()) {
		return status.Error(codes.Unauthenticated, unauthenticated)
	}
	switch method {
	case getMethod:
		return p.unary(ss, method, false)
	case batchMethod:
		return p.unary(ss, method, true)
	}
	p.metrics.forwarded(method)
	return p.stream(ss, method)
}

// open says which methods need no token: health and reflection, as in EmbArk itself.
func open(method string) bool {
	return strings.HasPrefix(method, "/grpc.health.v1.Health/") ||
		strings.HasPrefix(method, "/grpc.reflection.")
}

func (p *proxy) authorized(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	got := md.Get("authorization")
	return len(got) == 1 && subtle.ConstantTimeCompare([]byte(got[0]), []byte(p.token)) == 1
}

// unary answers a (Batch)GetEmbedding from memory, or forwards it and remembers its HITs.
func (p *proxy) unary(ss grpc.ServerStream, method string, batch bool) error {
	var req []byte
	if err := ss.RecvMsg(&req); err != nil {
		return err
	}
	l, cacheable := parseRequest(req, batch)
	cacheable = cacheable && len(l.inputs) <= p.maxBatch
	var revision string
	var keys []string
	if cacheable {
		revision, keys = p.keys(l)
		if embs := p.answer(keys); embs != nil {
			p.metrics.answered(method, len(embs))
			resp := response(embs)
			return ss.SendMsg(&resp)
		}
	}
	p.metrics.forwarded(method)
	var header, trailer metadata.MD
	var resp []byte
	err := p.conn().Invoke(outgoing(ss.Context()), method, &req, &resp,
		grpc.ForceCodec(rawCodec{}), grpc.Header(&header), grpc.Trailer(&trailer))
	if len(header) > 0 {
		_ = ss.SetHeader(header) // fails only once the call has ended; nothing to tell
	}
	ss.SetTrailer(trailer)
	if err != nil {
		return err // upstream's status, code and message as they are
	}
	if keys != nil {
		p.remember(l, revision, keys, resp)
	}
	return ss.SendMsg(&resp)
}

// keys names each input under the model's current revision (returned with them); nil keys
// when the catalog does not know the model (not built, or no ListModels answer yet).
func (p *proxy) keys(l lookup) (string, []string) {
	revision, ok := p.catalog.revision(l.model)
	if !ok {
		return "", nil
	}
	keys := make([]string, len(l.inputs))
	for i, in := range l.inputs {
		keys[i] = cacheKey(revision, l.model, l.dtype, in)
	}
	return revision, keys
}

// answer is every key's stored Embedding, or nil if any one is missing: a batch is answered
// whole from memory or forwarded whole, so it is never split into two answers.
func (p *proxy) answer(keys []string) [][]byte {
	if keys == nil {
		return nil
	}
	embs := make([][]byte, len(keys))
	for i, k := range keys {
		e, ok := p.vectors.get(k)
		if !ok {
			return nil
		}
		embs[i] = e
	}
	return embs
}

// remember stores each HIT of upstream's answer under its input's key, if it is of the
// model and the revision the keys name (a reload between the lookup and the answer must
// not file one revision's vector under another's).
func (p *proxy) remember(l lookup, revision string, keys []string, resp []byte) {
	embs, ok := embeddings(resp)
	if !ok || len(embs) != len(keys) {
		return
	}
	for i, raw := range embs {
		e, ok := parseEmbedding(raw)
		if ok && e.hit && e.model == l.model && e.revision == revision {
			// A copy: the slice points into the whole response, which may be a large batch.
			p.vectors.put(keys[i], append([]byte(nil), raw...))
		}
	}
}

// stream forwards any call, unary or streaming, frame by frame in both directions.
func (p *proxy) stream(ss grpc.ServerStream, method string) error {
	ctx, cancel := context.WithCancel(outgoing(ss.Context()))
	defer cancel()
	desc := &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}
	cs, err := p.conn().NewStream(ctx, desc, method, grpc.ForceCodec(rawCodec{}))
	if err != nil {
		return err
	}
	sent := make(chan error, 1)
	go func() {
		for {
			var frame []byte
			if err := ss.RecvMsg(&frame); err != nil {
				if errors.Is(err, io.EOF) {
					sent <- cs.CloseSend()
				} else {
					sent <- err
				}
				return
			}
			if err := cs.SendMsg(&frame); err != nil {
				sent <- nil // upstream ended the call; its status comes from RecvMsg below
				return
			}
		}
	}()
	header, err := cs.Header()
	if err == nil && len(header) > 0 {
		if err := ss.SendHeader(header); err != nil {
			return err
		}
	}
	for {
		var frame []byte
		if err := cs.RecvMsg(&frame); err != nil {
			ss.SetTrailer(cs.Trailer())
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := ss.SendMsg(&frame); err != nil {
			return err
		}
		select {
		case err := <-sent:
			if err != nil {
				return err // the caller's side failed: cancel upstream (deferred)
			}
		default:
		}
	}
}

// outgoing carries the caller's metadata (its token, its own headers) and deadline upstream.
// Headers gRPC sets itself per connection are left for the edge's own connection to set.
func outgoing(ctx context.Context) context.Context {
	md, _ := metadata.FromIncomingContext(ctx)
	out := metadata.MD{}
	for k, v := range md {
		if strings.HasPrefix(k, ":") || k == "content-type" || k == "user-agent" ||
			k == "te" || strings.HasPrefix(k, "grpc-") {
			continue
		}
		out[k] = v
	}
	return metadata.NewOutgoingContext(ctx, out)
}
