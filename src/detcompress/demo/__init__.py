"""The built-in demo: a synthetic dataset and config to try every command on, and `make demo`."""
