package main

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

func str(b []byte, num protowire.Number, v string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, v)
}

func msg(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func varint(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func input(text string) []byte { return str(nil, 1, text) } // Input.text

func TestParseRequestReadsModelDtypeAndInputsAndIgnoresWaitMs(t *testing.T) {
	a := varint(msg(str(nil, reqModel, "m"), reqInput, input("x")), reqDtype, 1)
	b := varint(a, reqWaitMs, 250)
	for _, req := range [][]byte{a, b} {
		l, ok := parseRequest(req, false)
		if !ok || l.model != "m" || l.dtype != 1 || len(l.inputs) != 1 ||
			!bytes.Equal(l.inputs[0], input("x")) {
			t.Fatalf("parseRequest(%x) = %+v, %v", req, l, ok)
		}
	}
	batch := msg(msg(str(nil, reqModel, "m"), reqInput, input("x")), reqInput, input("y"))
	l, ok := parseRequest(batch, true)
	if !ok || len(l.inputs) != 2 || !bytes.Equal(l.inputs[1], input("y")) {
		t.Fatalf("batch: %+v, %v", l, ok)
	}
}

func TestParseRequestRefusesWhatItDoesNotFullyUnderstand(t *testing.T) {
	base := msg(str(nil, reqModel, "m"), reqInput, input("x"))
	cases := map[string][]byte{
		"unknown field":          str(base, 9, "future option"),
		"wrong wire type":        str(str(nil, reqModel, "m"), reqDtype, "x"),
		"second singular input":  msg(base, reqInput, input("y")),
		"no input":               str(nil, reqModel, "m"),
		"truncated":              base[:len(base)-1],
		"garbage":                {0xff, 0xff, 0xff},
		"length past the end":    append(protowire.AppendTag(nil, reqInput, protowire.BytesType), 9),
		"model as a varint type": varint(msg(nil, reqInput, input("x")), reqModel, 3),
	}
	for name, req := range cases {
		if l, ok := parseRequest(req, false); ok {
			t.Errorf("%s: parseRequest accepted %x as %+v", name, req, l)
		}
	}
}

func TestCacheKeysDifferInEveryPart(t *testing.T) {
	keys := map[string]string{
		"base":     cacheKey("r1", "m", 0, input("x")),
		"revision": cacheKey("r2", "m", 0, input("x")),
		"model":    cacheKey("r1", "n", 0, input("x")),
		"dtype":    cacheKey("r1", "m", 1, input("x")),
		"input":    cacheKey("r1", "m", 0, input("y")),
		// Length prefixes: moving a byte from one part to the next is another key.
		"shifted": cacheKey("r", "1m", 0, input("x")),
	}
	seen := map[string]string{}
	for name, k := range keys {
		if other, dup := seen[k]; dup {
			t.Fatalf("%s and %s share a key", name, other)
		}
		seen[k] = name
	}
}

func embeddingMsg(status uint64, model, revision string) []byte {
	b := varint(nil, embStatus, status)
	b = str(str(b, embModel, model), embRevision, revision)
	return msg(b, 4, []byte{1, 2, 3, 4}) // vector: skipped
}

func TestResponsesSplitAndJoinAgain(t *testing.T) {
	embs := [][]byte{embeddingMsg(statusHit, "m", "r1"), embeddingMsg(2, "m", "r1")}
	got, ok := embeddings(response(embs))
	if !ok || len(got) != 2 || !bytes.Equal(got[0], embs[0]) || !bytes.Equal(got[1], embs[1]) {
		t.Fatalf("round trip: %x, %v", got, ok)
	}
	hit, ok := parseEmbedding(embs[0])
	if !ok || !hit.hit || hit.model != "m" || hit.revision != "r1" {
		t.Fatalf("parseEmbedding: %+v, %v", hit, ok)
	}
	if pending, _ := parseEmbedding(embs[1]); pending.hit {
		t.Fatal("PENDING read as a HIT")
	}
}

func TestBuiltRevisionsSkipsModelsOnlyDefined(t *testing.T) {
	built := varint(str(str(nil, infoName, "a"), infoRevision, "r-a"), infoBuilt, 1)
	defined := str(nil, infoName, "b")
	withOther := varint(str(str(nil, infoName, "c"), infoRevision, "r-c"), infoBuilt, 1)
	withOther = varint(str(withOther, 2, "text"), 3, 384) // kind, dim: skipped
	resp := msg(msg(msg(nil, listModels, built), listModels, defined), listModels, withOther)
	got, ok := builtRevisions(resp)
	if !ok || len(got) != 2 || got["a"] != "r-a" || got["c"] != "r-c" {
		t.Fatalf("builtRevisions = %v, %v", got, ok)
	}
}
