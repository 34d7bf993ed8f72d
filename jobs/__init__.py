"""jobs: the Ray side of pose-jobs (Ray Data ingest and inference, Ray Train) and the CLI."""
