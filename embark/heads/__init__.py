"""Categorizer heads: small classifiers applied to cached embeddings.

dataset.py    labelled data (the CN2023 loader, plain files)
embed.py      embeddings for training, fetched through EmbArk (read-through)
train.py      fitting a head (logistic regression on embedding + TF-IDF)
artifact.py   the head on disk and in memory; the model-revision binding
evaluate.py   top-1/top-3 on random and held-out splits beside baselines
service.py    Categorize: lookup, mat-vec, softmax, top-k
bulk.py       backfill and export
cli.py        the `embark heads|categorize|backfill|export` commands
"""
