"""The foundation: storage, path layout, run summaries, the catalog contract, safe image
decoding and the embeddings Parquet contract. Imports nothing of this project above it."""
