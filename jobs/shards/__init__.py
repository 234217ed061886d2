"""One shard's run, a module per concern: the claim under a lease and its fenced commit (`claim`, `commit`), the
rows read back (`reading`), the error rows a shard makes (`error_rows`), the rows streamed through the engine
(`stream`) and turned into results (`outcome`), the engine shared between shards (`gate`), and the run (`runner`).
"""
