package main

import (
	"strconv"
	"testing"
)

func TestVectorsAreBoundedInBytes(t *testing.T) {
	v := newVectors(64 << 10)
	value := make([]byte, 1000)
	for i := range 1000 {
		v.put(cacheKey("r", "m", 0, []byte(strconv.Itoa(i))), value)
	}
	v.lru.CleanUp()
	if got := v.bytes(); got > 64<<10 || got < 32<<10 {
		t.Fatalf("%d bytes held, bound 65536", got)
	}
	off := newVectors(0)
	off.put("k", value)
	if _, ok := off.get("k"); ok {
		t.Fatal("EDGE_CACHE_BYTES=0 still caches")
	}
}
