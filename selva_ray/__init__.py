"""Ray distribution, I/O and job logic for SelVA batch work."""
