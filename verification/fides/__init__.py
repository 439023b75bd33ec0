"""Fides: result verification for ML inference by a distilled verification model.

Method (Kumar et al., "A Generative Framework for Low-Cost Result Validation of Machine
Learning-as-a-Service Inference", arXiv 2304.00083):
    1. `gdtl`: a compact verification model is distilled from the service model by Greedy
       Distillation Transfer Learning (meant to run in an enclave on a verifier node).
    2. `detector`: a client-side attack detector on the divergence between the service's and the
       verifier's output distributions, and a re-classifier that predicts the honest class,
       both trained in a GAN framework against a generator of attacked outputs.
    3. `verifier.FidesVerifier.verify(inputs, service_probs) -> list[Verdict]`.

Threat model and limits: see `verifier`. Experiments on real data: `experiment`; figures:
`bench/integrity.py` and `docs/fides.md`.
"""

from .errors import FidesError, InvalidInput, ModelFormatError
from .verifier import FidesVerifier, Judgement, Verdict

__all__ = [
    "FidesError",
    "FidesVerifier",
    "InvalidInput",
    "Judgement",
    "ModelFormatError",
    "Verdict",
]
