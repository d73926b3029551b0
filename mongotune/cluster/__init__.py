"""Running the pool under cluster schedulers: Slurm job arrays and Kubernetes manifests."""
