"""A worker split in two: front processes that decode, tokenize and aggregate, and one model
process that owns the shared queue, the batches and the GPU (docs/PROCESSES.md).

``messages`` is what crosses between them, ``frames`` how it travels (a Unix stream socket),
``model_process`` the model's side and ``remote_engine`` the ``Engine`` a front holds.
"""
