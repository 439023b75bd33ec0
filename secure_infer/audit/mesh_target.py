"""A mesh-served audit target: black-box queries through the SDK's `Classify` service.

`target.path = "mesh://NAME"` audits the classifier NAME that a node hosts (`--classifier
NAME=DIR`), reached through `target.seeds` with the client certificate `target.identity` from
`target.certs` (mTLS; `target.insecure_dev` for loopback development). The attacks see what any
client sees: the output distribution per example (`client.classify(..., privacy="none")`);
logits are taken as log-probabilities, which leaves every attack here unchanged (they depend on
the probabilities only). `export_classifier` turns this tool's MLP checkpoint into a classifier
directory a node can host, so a model owner can audit the deployed model end to end.

Limits: the node reports probabilities as float32, so confidences above 1 - 6e-8 are clipped,
and what the node runs is its claim (the digest it lists); the audit measures the model that
answered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from secure_infer.audit.errors import ModelMismatch

SCHEME = "mesh://"
_EPS = 1e-12


def is_mesh(path: str) -> bool:
    return path.startswith(SCHEME)


class MeshTarget:
    """A classifier served by the mesh, queried in batches the node accepts."""

    def __init__(
        self,
        path: str,
        seeds: list[str],
        *,
        certs: str = "",
        identity: str = "client",
        insecure_dev: bool = False,
    ) -> None:
        from secure_infer import certs as pki
        from secure_infer.client import Client

        self.model = path[len(SCHEME) :]
        if not self.model or not seeds:
            raise ModelMismatch("a mesh target needs mesh://NAME and target.seeds")
        tls = None if insecure_dev else pki.material(Path(certs), identity)
        self._client = Client(seeds, tls=tls, insecure_dev=insecure_dev)
        self.description = f"mesh-served classifier {self.model} (seeds {', '.join(seeds)})"
        self.n_features = self.n_classes = -1
        self._batch = 256

    def _query(self, x: np.ndarray) -> Any:
        return self._client.classify(self.model, x, privacy="none")

    def logits(self, x: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(x), self._batch):
            res = self._query(np.ascontiguousarray(x[start : start + self._batch], np.float32))
            out.append(np.log(np.clip(res.probs.astype(np.float64), _EPS, 1.0)))
        return np.concatenate(out).astype(np.float32)

    def check_fits(self, n_features: int, n_classes: int) -> None:
        """Raise ModelMismatch unless the served model maps n_features rows to n_classes."""
        try:
            res = self._query(np.zeros((2, n_features), np.float32))
        except Exception as exc:  # noqa: BLE001 - SDK errors name the cause; re-raised typed
            raise ModelMismatch(f"{self.description} cannot take the data's rows: {exc}") from None
        if res.probs.shape != (2, n_classes):
            raise ModelMismatch(
                f"{self.description} outputs {res.probs.shape[1:]} classes; the data has "
                f"{n_classes}"
            )
        self.n_features, self.n_classes = n_features, n_classes
        self.description += f", digest {res.model_digest[:16]} on node {res.node_name}"

    def close(self) -> None:
        self._client.close()


def export_classifier(checkpoint: Path, out_dir: Path) -> Path:
    """This tool's MLP checkpoint (MNIST-shaped: 784 features in [0, 1]) -> a classifier
    directory for `--classifier NAME=DIR` (`verification.fides.service_model`)."""
    from secure_infer.audit.models import read_checkpoint
    from verification.fides.nets import MLPNet
    from verification.fides.service_model import save_classifier

    arch, state_dict = read_checkpoint(Path(checkpoint))
    net = MLPNet(arch["n_features"], list(arch["hidden"]), arch["n_classes"])
    # The tool's MLP is Linear/ReLU layers; MLPNet's starts with a Flatten (index 0).
    try:
        state = {
            f"net.{int(k.split('.')[0]) + 1}.{k.split('.')[1]}": v for k, v in state_dict.items()
        }
        state.update(shift=net.shift, scale=net.scale)  # no input standardization
        net.load_state_dict(state)
    except (ValueError, IndexError, RuntimeError) as exc:
        raise ModelMismatch(
            f"{checkpoint}: the state_dict does not fit its arch {arch}: "
            f"{' '.join(str(exc).split())[:400]}"
        ) from None
    labels = [str(i) for i in range(arch["n_classes"])]
    return save_classifier(out_dir, net, labels)
