"""Text tools shared by several stages: MinHash, code similarity, embeddings, diversity, benchmark
contamination and the checks that run synthetic code."""
