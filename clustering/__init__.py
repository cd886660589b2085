"""DeepCluster, embeddings, faiss k-means, the UMAP map and cluster statistics.

Plain data in, plain data out: arrays and file paths, never the database (that is backend/)."""
