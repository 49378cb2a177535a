package main

import (
	"strings"
	"testing"
)

func TestSettingsRefuseBadValuesWithTheirName(t *testing.T) {
	for name, value := range map[string]string{
		"EDGE_CACHE_BYTES":          "lots",
		"EDGE_CATALOG_POLL_S":       "0",
		"EDGE_UPSTREAM_CONNECTIONS": "0",
		"EDGE_MAX_MESSAGE_BYTES":    "12",
		"EDGE_MAX_BATCH":            "0",
		"EDGE_TLS_CERT_FILE":        "cert.pem", // without its key
	} {
		_, err := load(func(k string) string {
			if k == name {
				return value
			}
			return ""
		})
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s=%s: %v", name, value, err)
		}
	}
	s, err := load(func(string) string { return "" })
	if err != nil || s.upstream != "127.0.0.1:50051" || s.cacheBytes != 256<<20 {
		t.Fatalf("defaults: %+v, %v", s, err)
	}
}
