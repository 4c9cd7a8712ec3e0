"""On-disk formats: run folders, checkpoints, search manifests, atomic files and locks, old formats."""
