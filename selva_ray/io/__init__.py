"""Shared I/O of every job: the catalog reader, output folders and their ledger, the Parquet
schemas, and the row/error shapes. Jobs (`selva_ray.extract`, ...) build on this package only."""
