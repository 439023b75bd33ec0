"""CrypTen 0.4.1 behind one module, with its compatibility fixes for torch 2.13 in one place.

CrypTen (facebookresearch/CrypTen) was last released in 2022-12. As published it neither
installs (dead `sklearn` dependency, pulls torchvision and a CUDA torch) nor imports on current
torch. The Makefile installs it with `--no-deps` plus its real imports (numpy, pyyaml,
omegaconf, onnx); this module applies the smallest fixes that make it import and run:

1. `crypten.nn.onnx_converter` probes `torch.onnx._internal.registration`, which moved to
   `torch.onnx._internal.torchscript_exporter.registration` in torch 2.9. The probe only
   decides which code path to take, so the moved module is aliased under the old name.
2. `crypten.nn.from_pytorch` calls `torch.onnx.export`, whose default is now the dynamo
   exporter (which ignores CrypTen's custom symbolics): the TorchScript exporter is selected
   with `dynamo=False`.

3. Randomness (`install_csprng`, run by `load()`): every draw CrypTen makes for shares, PRSS
   masks and TTP triples comes from `mpc.prg.AESCTRGenerator` (AES-128-CTR) keyed with 128-bit
   seeds from `secrets`, instead of `torch.Generator` (Mersenne Twister) seeded with 8 bytes.
   See `install_csprng` for the list of call sites it replaces and the one it leaves alone.
4. Decoding: `FixedPointEncoder.decode` divides negative values by `scale - 1` and returns
   values just above a negative integer off by exactly -1 (e.g. -3.99999 -> -4.99999). It is
   replaced by the exact decode: floor(v / scale) + (v mod scale) / scale.

5. Dealer batching (`mpc.backends.crypten_dealer`): the TTP can deal a whole computation's
   correlated randomness in one round trip ahead of time instead of one per triple.
6. Exact truncation (`mpc.backends.crypten_trunc`): two-party divisions by a public integer use
   a dealer-made truncation pair with the mask's top bit instead of CrypTen's local truncation,
   which silently returns values off by ~2^48 when the shares wrap around.
7. Fixed weight masks (`mpc.backends.crypten_weights`): a secret weight matrix opens its Beaver
   mask once per session instead of on every product.
8. Attribute access: CrypTen wraps `CrypTensor.__getattribute__` in its debug validator, which
   reads `cfg.debug.validation_mode` through omegaconf on every attribute access of every
   tensor (about half of a decode step's time in profiles). Validation mode is a debugging aid
   we never enable, so the wrapper is removed; `load()` refuses a config that enables it.
9. Empty tensors: `MPCTensor([])`, which `shallow_copy`, `clone` and `from_shares` use as a blank
   to fill, means to skip sharing (`if tensor is []`), but that identity test is never true, so
   every such blank ran a full sharing of an empty tensor: an encode and a PRZS draw from both
   pairwise AES generators (about 0.27 ms each, ~1,900 times in a ViT forward: a tenth of a
   party's compute). The blank is built without sharing, as intended.
10. Triple sizes: with the TTP provider, every party but 0 learns the size of its share of c
   in a triple by running the operation itself on its shares of a and b (CrypTen's "TODO:
   compute size without executing computation"): a full int64 matmul per Beaver matmul, thrown
   away. The size is taken from the same operation on meta tensors (shapes only).

Nothing else in the project imports `crypten`: use `load()`.
"""

from __future__ import annotations

import importlib
import secrets
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import torch

from mpc.errors import InsecureRandomness
from mpc.prg import SEED_BYTES, AESCTRGenerator, ShapeLike

_LOCK = threading.RLock()
_CRYPTEN: ModuleType | None = None
CRYPTEN_VERSION = "0.4.1"


class CrypTenUnavailable(ImportError):
    """CrypTen is not installed (run `make install`), or not the version these fixes target."""


def _alias_onnx_registration() -> None:
    """Fix 1: make the old registry module path importable."""
    old = "torch.onnx._internal.registration"
    if old in sys.modules:
        return
    try:
        importlib.import_module(old)
        return
    except ImportError:
        pass
    moved = importlib.import_module("torch.onnx._internal.torchscript_exporter.registration")
    sys.modules[old] = moved


def _torchscript_onnx_export() -> None:
    """Fix 2: CrypTen's ONNX conversion needs the TorchScript exporter."""
    import torch.onnx

    converter = importlib.import_module("crypten.nn.onnx_converter")
    if getattr(converter, "_secure_infer_patched", False):
        return
    original = torch.onnx.export

    def export(*args: object, **kwargs: object) -> object:
        kwargs.setdefault("dynamo", False)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    # Patch only the name CrypTen's converter calls through, not torch globally.
    converter.torch = _TorchWithExport(torch, export)  # type: ignore[attr-defined]
    converter._secure_infer_patched = True  # type: ignore[attr-defined]


class _TorchWithExport:
    """A view of the torch module whose `onnx.export` defaults to the TorchScript exporter."""

    def __init__(self, torch_module: ModuleType, export: object) -> None:
        self._torch = torch_module
        self.onnx = _OnnxWithExport(torch_module.onnx, export)

    def __getattr__(self, name: str) -> object:
        return getattr(self._torch, name)


class _OnnxWithExport:
    def __init__(self, onnx_module: ModuleType, export: object) -> None:
        self._onnx = onnx_module
        self.export = export

    def __getattr__(self, name: str) -> object:
        return getattr(self._onnx, name)


def load() -> ModuleType:
    """Import CrypTen with the fixes applied; idempotent and thread-safe."""
    global _CRYPTEN
    with _LOCK:
        if _CRYPTEN is not None:
            return _CRYPTEN
        _alias_onnx_registration()
        try:
            crypten = importlib.import_module("crypten")
        except ModuleNotFoundError as exc:
            raise CrypTenUnavailable(
                "CrypTen is not installed: run `make install` (it installs crypten==0.4.1 "
                "with --no-deps)"
            ) from exc
        version = getattr(crypten, "__version__", "")
        if version and version != CRYPTEN_VERSION:
            raise CrypTenUnavailable(
                f"these compatibility fixes target CrypTen {CRYPTEN_VERSION}, found {version}"
            )
        _torchscript_onnx_export()
        _exact_decode(crypten)
        _install_csprng(crypten)
        from mpc.backends import crypten_compare, crypten_dealer, crypten_trunc, crypten_weights

        crypten_trunc.install(crypten)
        crypten_weights.install(crypten)
        crypten_compare.install(crypten)
        crypten_dealer.install(crypten)
        _fast_attribute_access(crypten)
        _blank_tensors(crypten)
        _triple_sizes_without_compute(crypten)
        _CRYPTEN = crypten
        return crypten


# Fix 7: attribute access without the debug validator.


def _fast_attribute_access(crypten: ModuleType) -> None:
    if crypten.cfg.debug.validation_mode:
        raise CrypTenUnavailable("CrypTen's debug validation_mode is not supported here")
    cls = crypten.CrypTensor
    wrapped = getattr(cls.__getattribute__, "__wrapped__", None)
    if wrapped is not None:
        cls.__getattribute__ = wrapped


# Fix 9: MPCTensor([]) without a sharing.


def _blank_tensors(crypten: ModuleType) -> None:
    cls = crypten.mpc.MPCTensor
    if getattr(cls.__init__, "_secure_infer_blank", False):
        return
    original = cls.__init__
    base_init = crypten.CrypTensor.__init__

    def init(self: Any, tensor: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(tensor, list) and not tensor and not args:
            base_init(self, requires_grad=kwargs.pop("requires_grad", False))
            self._tensor = torch.tensor([], device=kwargs.get("device"))
            self.ptype = kwargs.get("ptype", crypten.mpc.ptype.arithmetic)
            return
        original(self, tensor, *args, **kwargs)

    init._secure_infer_blank = True  # type: ignore[attr-defined]
    cls.__init__ = init


# Fix 10: a triple's size from meta tensors.


def _triple_sizes_without_compute(crypten: ModuleType) -> None:
    ttp = crypten.mpc.provider.ttp_provider
    provider = ttp.TrustedThirdParty
    if getattr(provider.generate_additive_triple, "_secure_infer_meta", False):
        return
    from_shares = crypten.mpc.primitives.ArithmeticSharedTensor.from_shares

    def generate_additive_triple(
        self: Any, size0: Any, size1: Any, op: str, device: Any = None, *args: Any, **kwargs: Any
    ) -> tuple[Any, Any, Any]:
        """CrypTen's TTP triple, with party > 0's share of c sized by a meta-tensor op."""
        client = ttp.TTPClient.get()
        generator = client.get_generator(device=device)
        a = ttp.generate_random_ring_element(size0, generator=generator, device=device)
        b = ttp.generate_random_ring_element(size1, generator=generator, device=device)
        if ttp.comm.get().get_rank() == 0:
            c = client.ttp_request("additive", device, size0, size1, op, *args, **kwargs)
        else:
            function = getattr(torch, op)
            c_size = function(a.to("meta"), b.to("meta"), *args, **kwargs).size()
            c = ttp.generate_random_ring_element(c_size, generator=generator, device=device)
        return (
            from_shares(a, precision=0),
            from_shares(b, precision=0),
            from_shares(c, precision=0),
        )

    generate_additive_triple._secure_infer_meta = True  # type: ignore[attr-defined]
    provider.generate_additive_triple = generate_additive_triple


# Fix 4: exact fixed-point decoding.


def _exact_decode(crypten: ModuleType) -> None:
    encoder_cls = crypten.encoder.FixedPointEncoder
    if getattr(encoder_cls.decode, "_secure_infer_exact", False):
        return
    original = encoder_cls.decode

    def decode(self: Any, tensor: torch.Tensor | None) -> torch.Tensor | None:
        """v (int64, scaled by 2^f) -> floor(v / scale) + (v mod scale) / scale, exactly."""
        if tensor is None or self._scale <= 1:
            return original(self, tensor)  # type: ignore[no-any-return]
        if tensor.dtype != torch.int64:
            raise TypeError(f"decode expects an int64 tensor, got {tensor.dtype}")
        whole = torch.div(tensor, self._scale, rounding_mode="floor")
        frac = tensor - whole * self._scale  # in [0, scale)
        return (whole.float() + frac.float() / self._scale).data

    decode._secure_infer_exact = True  # type: ignore[attr-defined]
    encoder_cls.decode = decode


# Fix 3: CrypTen's randomness from a CSPRNG (see `install_csprng` for what is replaced).

_RNG_MODULES = (  # every CrypTen module that binds the rng helpers by name
    "crypten.common.rng",
    "crypten.mpc.primitives.arithmetic",
    "crypten.mpc.primitives.binary",
    "crypten.mpc.provider.ttp_provider",
    "crypten.mpc.provider.tfp_provider",
)
_PAIR_LABEL = "crypten/prss/pair"  # the seed rank i sends rank i+1: "next" at i, "prev" at i+1
_GLOBAL_LABEL = "crypten/prss/global"  # rank 0's seed, broadcast to every party
_TTP_LABEL = "crypten/ttp"  # the seed the TTP server sends each party
_RING_SIZE = 2**64


def install_csprng() -> None:
    """Route every random draw CrypTen makes for MPC through `mpc.prg.AESCTRGenerator`.

    Idempotent and thread-safe. `load()` calls it, so every CrypTen use in the project gets it;
    it must take effect before `crypten.init()` (it raises `InsecureRandomness` otherwise).

    What it replaces, and why:

    - `crypten.common.rng.generate_random_ring_element` and `generate_kbit_random_tensor`, the
      two helpers every share, mask and triple is drawn through (`torch.randint` on a
      `torch.Generator`). Other modules import them by name, so the names are rebound wherever
      they are bound: `crypten.mpc.primitives.arithmetic` (PRZS, PRSS: input shares and zero
      sharings), `crypten.mpc.primitives.binary` (PRZS, `rand`), `crypten.mpc.provider.
      ttp_provider` (triples, squares, wraps and B2A, on the parties and on the TTP server) and
      `crypten.mpc.provider.tfp_provider` (trusted-first-party triples). The replacements draw
      from an `AESCTRGenerator` and raise `InsecureRandomness` when given anything else (such
      as a `torch.Generator`), so a path this patch misses fails instead of silently using MT.
      They are uniform over all of Z_2^64 (CrypTen's `randint` bound excluded 2^63 - 1).
    - `crypten._setup_prng` (run by `crypten.init` and `init_thread`), which exchanged 8-byte
      `os.urandom` seeds and seeded the `torch.Generator`s in `crypten.generators`. Now each
      party sends a 16-byte `secrets` seed to the next rank and rank 0 broadcasts a 16-byte
      global seed; `crypten.generators[role][device]` hold `AESCTRGenerator`s: "next" and "prev"
      from the seeds sent and received, "global" from the broadcast seed, "local" from a fresh
      local seed. One instance per role serves every device key, so no stream is replayed on a
      second device.
    - `crypten.manual_seed` (64-bit seeds, debug mode only): refused with `InsecureRandomness`.
    - `_setup_generators` of `TTPClient` and `TTPServer`: the server drew one 64-bit seed per
      party with `torch.randint` from torch's global Mersenne Twister and both ends seeded
      `torch.Generator`s. Now the server sends each party a 16-byte `secrets` seed and both ends
      derive an `AESCTRGenerator` from it. The seed message changed shape (int64[2] instead of
      an int64 scalar), so both ends must run this patch: `mpc.launch` does. Both ends use
      `torch.distributed` directly, as CrypTen does, unless the communicator sets
      `ROUTES_TTP_TRAFFIC` (`mpc.backends.crypten_comm.TransportCommunicator`): then the seeds
      and the barrier go through its group-aware `send`/`recv`/`barrier`.
    - `torch.rand(..., generator=crypten.generators["global"])` in `crypten.gradients` (dropout
      masks, training only): `crypten.gradients.torch` becomes a view of torch whose `rand`
      draws from the `AESCTRGenerator` it is given.

    Not replaced: `crypten.nn.privacy.dp_split` draws plaintext DP noise with `torch.randn` and
    `Tensor.bernoulli` from torch's global generator. It is a training-time label-DP feature,
    not part of an MPC protocol, and a narrow patch is not possible; do not use it.

    Raises:
        InsecureRandomness: `crypten.init()` already ran with torch generators.
    """
    crypten = load()  # load() installs; this call only makes the contract explicit
    with _LOCK:
        _install_csprng(crypten)


def _install_csprng(crypten: ModuleType) -> None:
    if getattr(crypten, "_secure_infer_csprng", False):
        return
    for role, by_device in crypten.generators.items():
        for gen in by_device.values():
            if not isinstance(gen, AESCTRGenerator):
                raise InsecureRandomness(
                    f"crypten.generators[{role!r}] already holds a {type(gen).__name__}: "
                    "crypten.init() ran before the CSPRNG was installed; import CrypTen only "
                    "through mpc.backends.crypten.load()"
                )
    modules = [importlib.import_module(name) for name in _RNG_MODULES]
    rng = modules[0]
    replacements: dict[str, Callable[..., object]] = {
        "generate_random_ring_element": _generate_random_ring_element,
        "generate_kbit_random_tensor": _generate_kbit_random_tensor,
    }
    originals = {name: getattr(rng, name) for name in replacements}
    loaded = [mod for name, mod in sys.modules.items() if name.split(".")[0] == "crypten"]
    for mod in loaded:
        for name, new in replacements.items():
            if getattr(mod, name, None) is originals[name]:
                setattr(mod, name, new)
    for mod in modules:
        for name, new in replacements.items():
            if getattr(mod, name, new) is not new:
                raise InsecureRandomness(f"{mod.__name__}.{name} could not be replaced")

    crypten._setup_prng = _setup_prng  # type: ignore[attr-defined]
    crypten.manual_seed = _refuse_manual_seed  # type: ignore[attr-defined]
    ttp = importlib.import_module("crypten.mpc.provider.ttp_provider")
    ttp.TTPClient._TTPClient__TTPClient._setup_generators = _ttp_client_setup_generators
    ttp.TTPServer._setup_generators = _ttp_server_setup_generators
    gradients = importlib.import_module("crypten.gradients")
    gradients.torch = _TorchWithCSPRNGRand(torch)  # type: ignore[attr-defined]
    crypten._secure_infer_csprng = True  # type: ignore[attr-defined]


def _seed_to_tensor(seed: bytes) -> torch.Tensor:
    """16 seed bytes as an int64[2] tensor (little-endian), for torch.distributed messages."""
    return torch.from_numpy(np.frombuffer(seed, dtype="<i8").astype(np.int64))


def _tensor_to_seed(tensor: torch.Tensor) -> bytes:
    return tensor.numpy().astype("<i8").tobytes()


_Device = torch.device | str | int | None


def _resolve_generator(generator: object, device: _Device) -> AESCTRGenerator:
    """The generator a draw uses: the one given, else this party's "local" generator."""
    if generator is None:
        local = sys.modules["crypten"].generators["local"]
        key = torch.device("cpu") if device is None else torch.device(device)
        generator = local.get(key, local.get(torch.device("cpu")))
        if generator is None:
            raise InsecureRandomness("no CSPRNG is set up yet: call crypten.init() first")
    if not isinstance(generator, AESCTRGenerator):
        raise InsecureRandomness(
            f"refusing to draw CrypTen randomness from a {type(generator).__name__}: "
            "expected an mpc.prg.AESCTRGenerator"
        )
    return generator


def _place(tensor: torch.Tensor, device: _Device) -> torch.Tensor:
    """Move a CPU draw to `device`, wrapping CUDA tensors the way CrypTen expects."""
    if device is None or torch.device(device).type == "cpu":
        return tensor
    moved = tensor.to(device)
    if moved.is_cuda:
        wrapped: torch.Tensor = importlib.import_module("crypten.cuda").CUDALongTensor(moved)
        return wrapped
    return moved


def _generate_random_ring_element(
    size: ShapeLike, ring_size: int = _RING_SIZE, generator: object = None, **kwargs: Any
) -> torch.Tensor:
    """Replaces `crypten.common.rng.generate_random_ring_element`: uniform over Z_2^64."""
    device: _Device = kwargs.pop("device", None)
    if kwargs:
        raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
    if ring_size != _RING_SIZE:
        raise InsecureRandomness(f"only ring_size 2**64 is supported, got {ring_size}")
    gen = _resolve_generator(generator, device)
    return _place(gen.random_ring(size), device)


def _generate_kbit_random_tensor(
    size: ShapeLike, bitlength: int | None = None, generator: object = None, **kwargs: Any
) -> torch.Tensor:
    """Replaces `crypten.common.rng.generate_kbit_random_tensor`: uniform in [0, 2^bitlength)."""
    device: _Device = kwargs.pop("device", None)
    if kwargs:
        raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
    gen = _resolve_generator(generator, device)
    bits = 64 if bitlength is None else bitlength
    return _place(gen.random_bits(size, bits), device)


def _devices() -> list[torch.device]:
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
        devices.extend(torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count()))
    return devices


def _setup_prng() -> None:
    """Replaces `crypten._setup_prng`: 16-byte `secrets` seeds, `AESCTRGenerator` streams.

    Rank i sends its "next" seed to rank i+1, where it becomes "prev"; rank 0 broadcasts the
    "global" seed; "local" never leaves the process. PRZS adds prev - next (or prev ^ next),
    which sums (xors) to zero over all parties.
    """
    crypten = sys.modules["crypten"]
    comm = importlib.import_module("crypten.communicator").get()
    world_size, rank = comm.get_world_size(), comm.get_rank()
    next_seed = secrets.token_bytes(SEED_BYTES)
    if world_size >= 2:
        received = torch.zeros(SEED_BYTES // 8, dtype=torch.int64)
        send = comm.isend(_seed_to_tensor(next_seed), (rank + 1) % world_size)
        recv = comm.irecv(received, src=(rank - 1) % world_size)
        send.wait()
        recv.wait()
        prev_seed = _tensor_to_seed(received)
    else:
        prev_seed = next_seed
    global_seed = _tensor_to_seed(
        comm.broadcast(_seed_to_tensor(secrets.token_bytes(SEED_BYTES)), 0)
    )
    streams = {
        "prev": AESCTRGenerator.from_shared_seed(prev_seed, _PAIR_LABEL),
        "next": AESCTRGenerator.from_shared_seed(next_seed, _PAIR_LABEL),
        "local": AESCTRGenerator(),
        "global": AESCTRGenerator.from_shared_seed(global_seed, _GLOBAL_LABEL),
    }
    for role, gen in streams.items():
        by_device = crypten.generators[role]  # mutate in place: modules hold this dict
        by_device.clear()
        for device in _devices():
            by_device[device] = gen


def _refuse_manual_seed(*args: object, **kwargs: object) -> None:
    """Replaces `crypten.manual_seed`, which would key the PRSS streams with 64-bit seeds."""
    raise InsecureRandomness(
        "crypten.manual_seed is disabled: CrypTen's generators are AES-CTR CSPRNGs with fresh "
        "128-bit seeds; tests that need a fixed stream can build mpc.prg.AESCTRGenerator(seed)"
    )


def _ttp_client_setup_generators(self: object) -> None:
    """Replaces `TTPClient.__TTPClient._setup_generators`: receive a 16-byte seed from the TTP."""
    import torch.distributed as dist

    comm = importlib.import_module("crypten.communicator").get()
    received = torch.zeros(SEED_BYTES // 8, dtype=torch.int64)
    group = self.ttp_group  # type: ignore[attr-defined]
    if _routes_ttp_traffic(comm):
        received = comm.recv(received, src=comm.get_ttp_rank(), group=group)
        comm.barrier(group=group)
        _set_client_generator(self, received)
        return
    request = dist.irecv(tensor=received, src=comm.get_ttp_rank(), group=group)
    if request is not None:  # None only if this rank is outside the group
        request.wait()
    dist.barrier(group=group)
    _set_client_generator(self, received)


def _set_client_generator(self: object, received: torch.Tensor) -> None:
    gen = AESCTRGenerator.from_shared_seed(_tensor_to_seed(received), _TTP_LABEL)
    self.generator = gen  # type: ignore[attr-defined]
    self.generator_cuda = gen if torch.cuda.is_available() else None  # type: ignore[attr-defined]


def _routes_ttp_traffic(comm: object) -> bool:
    """Whether `comm` carries the TTP seed exchange itself (`crypten_comm.TransportCommunicator`).

    CrypTen's TTP client and server exchange seeds with direct `torch.distributed` calls on
    `ttp_group`; a communicator that sets `ROUTES_TTP_TRAFFIC` offers group-aware `send`,
    `recv` and `barrier` instead, so no byte bypasses it. `DistributedCommunicator` keeps the
    `torch.distributed` path unchanged.
    """
    return getattr(comm, "ROUTES_TTP_TRAFFIC", False) is True


def _ttp_server_setup_generators(self: object) -> None:
    """Replaces `TTPServer._setup_generators`: one fresh 16-byte seed per party."""
    import torch.distributed as dist

    comm = importlib.import_module("crypten.communicator").get()
    group = self.ttp_group  # type: ignore[attr-defined]
    seeds = [secrets.token_bytes(SEED_BYTES) for _ in range(comm.get_world_size())]
    messages = [_seed_to_tensor(seed) for seed in seeds]
    if _routes_ttp_traffic(comm):
        for rank, message in enumerate(messages):
            comm.send(message, rank, group=group)
        _set_server_generators(self, seeds)
        comm.barrier(group=group)
        return
    requests = [
        dist.isend(tensor=message, dst=rank, group=group) for rank, message in enumerate(messages)
    ]
    _set_server_generators(self, seeds)
    for request in requests:
        if request is not None:
            request.wait()
    dist.barrier(group=group)


def _set_server_generators(self: object, seeds: list[bytes]) -> None:
    gens = [AESCTRGenerator.from_shared_seed(seed, _TTP_LABEL) for seed in seeds]
    self.generators = gens  # type: ignore[attr-defined]
    cuda = torch.cuda.is_available()
    self.generators_cuda = list(gens) if cuda else [None] * len(gens)  # type: ignore[attr-defined]


class _TorchWithCSPRNGRand:
    """A view of the torch module whose `rand` draws from the `AESCTRGenerator` it is given."""

    def __init__(self, torch_module: ModuleType) -> None:
        self._torch = torch_module

    def rand(
        self,
        *size: Any,
        generator: object = None,
        device: _Device = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        gen = _resolve_generator(generator, device) if generator is not None else None
        if gen is None:
            raise InsecureRandomness("crypten.gradients drew from torch.rand without a generator")
        shape = size[0] if len(size) == 1 and not isinstance(size[0], int) else size
        out = gen.random_uniform(shape, dtype or self._torch.get_default_dtype())
        return out if device is None else out.to(device)

    def __getattr__(self, name: str) -> object:
        return getattr(self._torch, name)
