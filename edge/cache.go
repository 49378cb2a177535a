package main

// The edge's memory: stored vectors (HIT answers) by (revision, model, dtype, input), bounded in
// bytes, and the catalog's current revision of each model.
//
// What is cached and why is the Python LRU's reasoning (embark/store/cached.py): only HITs,
// because a vector of a model revision never changes, so a cached one is never stale. The one
// thing that does change is which revision a model name serves (a new artifact and a catalog
// reload), so every key holds the revision the catalog names now: after a reload the old
// revision's entries are simply never asked for again and age out.

import (
	"sync/atomic"

	"github.com/maypok86/otter/v2"
	"google.golang.org/protobuf/encoding/protowire"
)

// entryOverhead is what an entry costs beyond its key and value bytes: otter's node, the two
// slice/string headers and the map slot, rounded up. It keeps the byte bound near the real
// memory for small vectors (a 64-bit binary vector is 8 bytes).
const entryOverhead = 128

// vectors holds encoded Embedding messages that answered HIT, by key.
type vectors struct {
	lru *otter.Cache[string, []byte]
}

func newVectors(maxBytes uint64) *vectors {
	if maxBytes == 0 {
		return &vectors{}
	}
	// otter rather than a hand-written LRU: concurrent reads without one global lock (every
	// gRPC call runs on its own goroutine), a byte bound through its weigher, and W-TinyLFU
	// eviction, which keeps a Zipf working set better than LRU at the same size.
	return &vectors{lru: otter.Must(&otter.Options[string, []byte]{
		MaximumWeight: maxBytes,
		Weigher: func(k string, v []byte) uint32 {
			return uint32(len(k) + len(v) + entryOverhead)
		},
	})}
}

func (v *vectors) get(key string) ([]byte, bool) {
	if v.lru == nil {
		return nil, false
	}
	return v.lru.GetIfPresent(key)
}

func (v *vectors) put(key string, embedding []byte) {
	if v.lru != nil {
		v.lru.Set(key, embedding)
	}
}

func (v *vectors) bytes() uint64 {
	if v.lru == nil {
		return 0
	}
	return v.lru.WeightedSize()
}

// cacheKey names one answer: a key always holds the model and its revision (DESIGN.md).
// Each part is length-prefixed, so no two different tuples share a key.
func cacheKey(revision, model string, dtype uint64, input []byte) string {
	b := make([]byte, 0, len(revision)+len(model)+len(input)+16)
	b = protowire.AppendString(b, revision)
	b = protowire.AppendString(b, model)
	b = protowire.AppendVarint(b, dtype)
	b = append(b, input...)
	return string(b)
}

// catalog is each built model's current revision, as upstream's ListModels last said.
// Until the first answer it is empty, and the edge answers nothing from memory.
type catalog struct {
	p atomic.Pointer[map[string]string]
}

func (c *catalog) revision(model string) (string, bool) {
	m := c.p.Load()
	if m == nil {
		return "", false
	}
	r, ok := (*m)[model]
	return r, ok
}

func (c *catalog) set(m map[string]string) { c.p.Store(&m) }

func (c *catalog) models() int {
	if m := c.p.Load(); m != nil {
		return len(*m)
	}
	return 0
}
