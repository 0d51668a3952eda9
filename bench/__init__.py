"""``make bench``: the quality bars of SPEC §9 measured on a real local system (see README, Benchmarks)."""
