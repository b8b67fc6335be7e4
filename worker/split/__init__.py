"""A worker split in two: front processes that decode, tokenize and aggregate, and one model
process that owns the shared queue, the batches and the GPU (docs/PROCESSES.md).

``messages`` is what crosses between them, ``frames`` how it travels (a Unix stream socket),
``model_process`` the model's side, ``remote_engine`` the ``Engine`` a front holds and
``remote_host`` its connection's life; ``children`` starts and restarts the processes,
``process_metrics`` merges their metrics into one set.
"""
