"""PUMA-style approximations of non-linear functions on secret shares, one family per module."""
