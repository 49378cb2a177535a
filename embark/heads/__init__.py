"""Categorizer heads: small classifiers applied to cached embeddings.

dataset.py    labelled data (the CN2023 loader, plain files)
embed.py      embeddings for training, fetched through EmbArk (read-through)
forms.py      title-like training forms of customs descriptions
train.py      fitting a head (logistic regression on embedding + TF-IDF)
artifact.py   the head on disk and in memory; the model-revision binding
scoring.py    top-k, calibration (ECE), section accuracy, the abstain curve
evaluate.py   train/validation/test splits, seeds, baselines, shop titles: one report
service.py    Categorize / BatchCategorize: lookup, mat-mul, softmax, top-k, abstain, section
bulk.py       backfill and export
cli.py        the `embark heads|categorize|backfill|export` commands
"""
