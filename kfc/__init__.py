"""KFC: the consumer loop that turns queued misses into stored vectors (worker.py); main.py
runs it as a process."""
