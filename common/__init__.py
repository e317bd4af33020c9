"""What every layer shares: the cache folder and its atomic writer (`common.cache`)."""
