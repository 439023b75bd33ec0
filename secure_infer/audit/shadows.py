"""Shadow / reference model training: cached, resumable, parallel (local processes or Ray).

Each shadow ``k`` trains the :class:`~secure_infer.audit.models.Recipe` MLP on the audited rows
where ``keep[k]`` is True and records its logits on the evaluation rows. Results are cached as
``<cache>/<config hash>/shadow_<k>.npz`` (written to a temporary name, then renamed, so an
interrupted run never leaves a half-written file); a rerun with the same configuration trains only
the shadows whose files are missing. The hash covers the data provenance, the rows, the masks,
the recipe, the seed and the seed stream, so a changed configuration never reuses stale shadows.

Seeds: model ``k`` of a spec trains with :func:`model_seed` ``(seed, *stream, k)``, a
``numpy.random.SeedSequence`` hash, so models of different roles (the target, shadow models, the
adversary's and the victim's models of each distribution) never share an initialization or
batch order: every group of models passes its own ``stream``.

Parallelism: ``workers`` local processes (forked where the OS allows, one torch thread each), or
the tasks of a Ray cluster when ``ray_address`` is given (Ray is optional; without it a clear
error is raised).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from secure_infer.audit.errors import BackendUnavailable
from secure_infer.audit.models import Recipe, logits_of, train_model

__all__ = [
    "STREAM_DISTRIBUTION",
    "STREAM_SHADOW",
    "STREAM_TARGET",
    "ShadowRun",
    "ShadowSpec",
    "balanced_keep",
    "cache_root",
    "model_seed",
    "require_ray",
    "train_shadows",
]


def cache_root() -> Path:
    """``$SECURE_INFER_CACHE/audit`` if set, else ``~/.cache/secure-infer/audit``."""
    base = os.environ.get("SECURE_INFER_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "secure-infer") / "audit"


# Seed streams of the models each audit trains (the first element of a spec's ``stream``).
STREAM_TARGET = 0  # the target model the tool trains (membership, subject)
STREAM_SHADOW = 1  # membership shadow models, subject reference models
STREAM_DISTRIBUTION = 2  # distribution inference: (STREAM_DISTRIBUTION, split, ratio code)


def model_seed(seed: int, *key: int) -> int:
    """A 63-bit torch seed for the model identified by ``key`` under the run's ``seed``.

    Distinct keys give independent seeds (``SeedSequence`` hashing); the same key and seed
    always give the same one.
    """
    state = np.random.SeedSequence(seed, spawn_key=tuple(int(k) for k in key)).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1]))


def balanced_keep(n_shadows: int, n_rows: int, seed: int) -> np.ndarray:
    """(K, N) masks in which every row is IN exactly half of the shadows (Carlini et al.)."""
    rng = np.random.default_rng(seed)
    order = rng.random((n_shadows, n_rows)).argsort(axis=0)
    return order < n_shadows // 2


@dataclass(frozen=True)
class ShadowSpec:
    """The data and recipe every shadow shares; ``keep`` selects each shadow's training rows."""

    x_train: np.ndarray  # (N, d) audited rows
    y_train: np.ndarray  # (N,)
    x_eval: np.ndarray  # (M, d) rows whose logits each shadow records
    n_classes: int
    recipe: Recipe
    keep: np.ndarray  # (K, N) bool
    seed: int
    provenance: dict[str, Any]
    stream: tuple[int, ...] = (STREAM_SHADOW,)  # seed stream of this group (see model_seed)

    def model_seed(self, k: int) -> int:
        return model_seed(self.seed, *self.stream, k)

    def digest(self) -> str:
        h = hashlib.sha256()
        meta = {
            "recipe": self.recipe.to_dict(), "seed": self.seed, "prov": self.provenance,
            "seeding": ["SeedSequence", *self.stream],
        }  # fmt: skip
        h.update(json.dumps(meta, sort_keys=True).encode())
        for arr in (self.x_train, self.y_train, self.x_eval, self.keep):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:20]


@dataclass(frozen=True)
class ShadowRun:
    """Logits of all shadows on the evaluation rows, and what was trained vs reused."""

    logits: np.ndarray  # (K, M, C)
    params: np.ndarray  # (K, P) flattened parameters (Linear weights then bias, layer by layer)
    trained: int
    cached: int
    cache_dir: Path


def _train_one(spec: ShadowSpec, k: int) -> tuple[np.ndarray, np.ndarray]:
    torch.set_num_threads(1)
    mask = spec.keep[k]
    model = train_model(
        spec.x_train[mask], spec.y_train[mask], spec.n_classes, spec.recipe, spec.model_seed(k)
    )
    params = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()
    return logits_of(model, spec.x_eval), params


_WORKER_SPEC: ShadowSpec | None = None


def _init_worker(spec: ShadowSpec) -> None:
    global _WORKER_SPEC  # per-process data, set once by the pool initializer
    _WORKER_SPEC = spec
    torch.set_num_threads(1)


_Result = tuple[int, tuple[np.ndarray, np.ndarray]]


def _pool_task(k: int) -> _Result:
    if _WORKER_SPEC is None:
        raise RuntimeError("shadow worker used without _init_worker")
    return k, _train_one(_WORKER_SPEC, k)


def _save(path: Path, result: tuple[np.ndarray, np.ndarray], keep: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, logits=result[0], params=result[1], keep=keep)
    tmp.replace(path)


def _local(spec: ShadowSpec, todo: list[int], workers: int) -> Iterator[_Result]:
    if workers <= 1 or len(todo) <= 1:
        for k in todo:
            yield k, _train_one(spec, k)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(spec,)) as pool:
        yield from pool.imap_unordered(_pool_task, todo)


def require_ray(address: str) -> Any:
    """The ``ray`` module, or :class:`BackendUnavailable` if it is not installed."""
    try:
        import ray
    except ImportError:
        raise BackendUnavailable(
            f"--ray-address {address} was given but ray is not installed "
            "(pip install 'ray[default]')"
        ) from None
    return ray


def _ray(spec: ShadowSpec, todo: list[int], address: str) -> Iterator[_Result]:
    ray = require_ray(address)
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    spec_ref = ray.put(spec)
    task = ray.remote(num_cpus=1)(lambda s, k: (k, _train_one(s, k)))
    pending = [task.remote(spec_ref, k) for k in todo]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])


def train_shadows(
    spec: ShadowSpec,
    *,
    workers: int = 1,
    ray_address: str | None = None,
    cache: Path | None = None,
    progress: bool = True,
    label: str = "shadow models",
) -> ShadowRun:
    """Train (or load from cache) every shadow of ``spec``; see the module docstring."""
    cache_dir = (cache or cache_root()) / spec.digest()
    cache_dir.mkdir(parents=True, exist_ok=True)
    n = len(spec.keep)
    paths = [cache_dir / f"shadow_{k:04d}.npz" for k in range(n)]
    todo = [k for k in range(n) if not paths[k].is_file()]
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for k in range(n):
        if k not in todo:
            with np.load(paths[k]) as f:
                results[k] = (f["logits"], f["params"])
    runner = _ray(spec, todo, ray_address) if ray_address else _local(spec, todo, workers)
    with tqdm(
        total=n, initial=n - len(todo), desc=label, unit="model", disable=not progress
    ) as bar:
        for k, result in runner:
            _save(paths[k], result, spec.keep[k])
            results[k] = result
            bar.update(1)
    return ShadowRun(
        np.stack([results[k][0] for k in range(n)]),
        np.stack([results[k][1] for k in range(n)]),
        len(todo),
        n - len(todo),
        cache_dir,
    )
