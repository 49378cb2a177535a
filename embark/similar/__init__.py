"""Similarity search over the archive (FindSimilar, `embark dedupe`): one small interface
(``base.SimilarityIndex``), one file per implementation (``cassandra.py`` on Cassandra 5's
vector search, ``sqlite.py`` exact search for the embedded mode), the service behind the RPC,
and the wrapper store that feeds the index from every write."""
