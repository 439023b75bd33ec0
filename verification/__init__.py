"""Integrity verification of inference results computed on machines the client does not control.

Subpackages:
    fides: a compact verification model distilled from the service model (meant to run inside
        an enclave on a verifier node), a client-side attack detector on the divergence between
        the service's and the verifier's output distributions, and a re-classifier
        (Kumar et al., "Fides", arXiv 2304.00083).

This package never imports grpc, `decentralized`, `secure_infer`, `mpc` or `tee`: the enclave and
mesh wiring lives in the layers above it.
"""
