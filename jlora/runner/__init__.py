"""Running the model: jitted steps over shape buckets, the paged KV cache, sampling."""
