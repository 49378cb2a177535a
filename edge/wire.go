package main

// The few fields of proto/embark_api/v1/embark.proto that the edge reads, by wire number, and
// nothing else: every other byte of a request or response passes through untouched. Field
// numbers are the wire contract every client already depends on (proto's compatibility rules
// forbid renumbering), so reading them here cannot drift from the servers without breaking
// every client too; tests/integration/test_edge.py runs the edge against the real servicer.

import (
	"google.golang.org/protobuf/encoding/protowire"
)

const (
	// GetEmbeddingRequest and BatchGetEmbeddingsRequest share their numbering: the second's
	// field 2 is the repeated form of the first's.
	reqModel  = 1
	reqInput  = 2
	reqWaitMs = 3
	reqDtype  = 4

	// GetEmbeddingResponse.embedding and BatchGetEmbeddingsResponse.embeddings.
	respEmbedding = 1

	embStatus   = 1
	embModel    = 2
	embRevision = 3
	statusHit   = 1 // Status.HIT

	// ListModelsResponse.models, ModelInfo.name, .revision and .built.
	listModels   = 1
	infoName     = 1
	infoRevision = 4
	infoBuilt    = 11
)

// lookup is what decides a cached answer: the model, the output dtype and each input's
// encoded Input message. wait_ms is left out on purpose: it only changes answers that are
// not HITs, and those are never cached.
type lookup struct {
	model  string
	dtype  uint64
	inputs [][]byte
}

// parseRequest reads a GetEmbeddingRequest (batch false: exactly one input) or a
// BatchGetEmbeddingsRequest. ok is false for anything the edge does not fully understand (a
// field it does not know, a wrong wire type, a repeated singular field): such a request is
// forwarded and its answer not cached, so an unknown field can never be ignored into a
// wrong hit.
func parseRequest(b []byte, batch bool) (l lookup, ok bool) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return lookup{}, false
		}
		b = b[n:]
		switch {
		case num == reqModel && typ == protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return lookup{}, false
			}
			l.model, b = string(v), b[m:]
		case num == reqInput && typ == protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 || (!batch && len(l.inputs) == 1) { // a second singular Input would merge
				return lookup{}, false
			}
			l.inputs, b = append(l.inputs, v), b[m:]
		case (num == reqWaitMs || num == reqDtype) && typ == protowire.VarintType:
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return lookup{}, false
			}
			if num == reqDtype {
				l.dtype = v
			}
			b = b[m:]
		default:
			return lookup{}, false
		}
	}
	if len(l.inputs) == 0 {
		return lookup{}, false
	}
	return l, true
}

// embedding is what the edge reads of one Embedding message.
type embedding struct {
	hit             bool
	model, revision string
}

func parseEmbedding(b []byte) (e embedding, ok bool) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return embedding{}, false
		}
		b = b[n:]
		if num == embStatus && typ == protowire.VarintType {
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return embedding{}, false
			}
			e.hit, b = v == statusHit, b[m:]
			continue
		}
		if (num == embModel || num == embRevision) && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return embedding{}, false
			}
			if num == embModel {
				e.model = string(v)
			} else {
				e.revision = string(v)
			}
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return embedding{}, false
		}
		b = b[m:]
	}
	return e, true
}

// embeddings splits a GetEmbeddingResponse or BatchGetEmbeddingsResponse into its encoded
// Embedding messages, in order.
func embeddings(b []byte) ([][]byte, bool) {
	var out [][]byte
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, false
		}
		b = b[n:]
		if num == respEmbedding && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return nil, false
			}
			out, b = append(out, v), b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return nil, false
		}
		b = b[m:]
	}
	return out, true
}

// response encodes stored Embedding messages as a (Batch)GetEmbeddingsResponse: both are
// field 1, once or repeated, so one encoding serves both methods.
func response(embs [][]byte) []byte {
	size := 0
	for _, e := range embs {
		size += protowire.SizeTag(respEmbedding) + protowire.SizeBytes(len(e))
	}
	out := make([]byte, 0, size)
	for _, e := range embs {
		out = protowire.AppendTag(out, respEmbedding, protowire.BytesType)
		out = protowire.AppendBytes(out, e)
	}
	return out
}

// builtRevisions reads a ListModelsResponse into each built model's current revision.
func builtRevisions(b []byte) (map[string]string, bool) {
	out := map[string]string{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, false
		}
		b = b[n:]
		if num != listModels || typ != protowire.BytesType {
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return nil, false
			}
			b = b[m:]
			continue
		}
		v, m := protowire.ConsumeBytes(b)
		if m < 0 {
			return nil, false
		}
		b = b[m:]
		name, revision, built, ok := modelInfo(v)
		if !ok {
			return nil, false
		}
		if built && name != "" && revision != "" {
			out[name] = revision
		}
	}
	return out, true
}

func modelInfo(b []byte) (name, revision string, built, ok bool) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", "", false, false
		}
		b = b[n:]
		switch {
		case (num == infoName || num == infoRevision) && typ == protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return "", "", false, false
			}
			if num == infoName {
				name = string(v)
			} else {
				revision = string(v)
			}
			b = b[m:]
		case num == infoBuilt && typ == protowire.VarintType:
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return "", "", false, false
			}
			built, b = v != 0, b[m:]
		default:
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return "", "", false, false
			}
			b = b[m:]
		}
	}
	return name, revision, built, true
}
