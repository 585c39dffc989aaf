"""The stage engine: the stage contract, its executors (datatrove: local, SLURM, Ray) and worker processes,
the inputs a stage plans over, the one reader, Parquet parts, manifests and sorted runs on disk."""
