"""Job queues: the `JobQueue` / `JobConsumer` protocols (base.py), one file per backend."""
