"""`tide api`: the OpenAI-compatible Files and Batches API, native jobs, and operations endpoints (FastAPI)."""
