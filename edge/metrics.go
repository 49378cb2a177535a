package main

// The edge's Prometheus metrics, on their own port (EDGE_METRICS_LISTEN): how many calls and
// vectors it answered from memory against how many it forwarded, its memory, and whether its
// view of the catalog is current. EmbArk's own metrics count only what reached it.

import (
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

type metrics struct {
	calls   *prometheus.CounterVec
	vectors prometheus.Counter
	polled  prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, v *vectors, c *catalog) *metrics {
	m := &metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "embark_edge_calls_total",
			Help: "Calls by method and by who answered: the edge's memory or upstream EmbArk.",
		}, []string{"method", "answered_by"}),
		vectors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "embark_edge_vectors_answered_total",
			Help: "Vectors answered from the edge's memory (a batch counts each of its inputs).",
		}),
		polled: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "embark_edge_catalog_polled_timestamp_seconds",
			Help: "When upstream last answered ListModels (0: never; until then nothing is cached).",
		}),
	}
	reg.MustRegister(m.calls, m.vectors, m.polled,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "embark_edge_cache_bytes",
			Help: "Bytes charged to the edge's memory (EDGE_CACHE_BYTES bounds it).",
		}, func() float64 { return float64(v.bytes()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "embark_edge_catalog_models",
			Help: "Built models whose current revision the edge knows.",
		}, func() float64 { return float64(c.models()) }))
	return m
}

func (m *metrics) answered(method string, vectors int) {
	m.calls.WithLabelValues(short(method), "edge").Inc()
	m.vectors.Add(float64(vectors))
}

func (m *metrics) forwarded(method string) {
	m.calls.WithLabelValues(short(method), "upstream").Inc()
}

func (m *metrics) catalogAnswered() { m.polled.Set(float64(time.Now().Unix())) }

// known are EmbArk's methods (embark.proto's service): a label value each.
var known = map[string]bool{
	"GetEmbedding": true, "BatchGetEmbeddings": true, "Categorize": true,
	"BatchCategorize": true, "ListModels": true, "FindSimilar": true,
}

// short keeps the label set bounded: EmbArk's methods by name, anything else (health,
// reflection, a name a caller made up) as "other".
func short(method string) string {
	if name, ok := strings.CutPrefix(method, service); ok && known[name] {
		return name
	}
	return "other"
}

func serveMetrics(addr string, reg *prometheus.Registry) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
}
