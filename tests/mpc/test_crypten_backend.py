"""CrypTen behind `mpc.backends.crypten`: CSPRNG installed, and 2 parties + TTP still compute.

The multi-process tests run real party processes over gloo on 127.0.0.1 (`mpc.launch`). The
party functions below are module-level so that the spawn start method can pickle them.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

from mpc.backends import crypten as backend
from mpc.errors import InsecureRandomness, PartyFailed, PartyTimeout
from mpc.launch import RemoteTraceback, run_parties
from mpc.prg import AESCTRGenerator

# CrypTen's default fixed point has 16 fractional bits; products add truncation error.
FIXED_POINT_ATOL = 1e-3
MATMUL_ATOL = 5e-3
PRECISION_BITS = 16
RUN_TIMEOUT_S = 90.0
TIMEOUT_TEST_S = 6.0

# Every torch sampling entry point a CrypTen protocol could reach.
_TORCH_SAMPLERS = (
    "rand",
    "rand_like",
    "randn",
    "randn_like",
    "randint",
    "randint_like",
    "randperm",
    "bernoulli",
    "normal",
    "multinomial",
    "poisson",
)
_TENSOR_SAMPLERS = (
    "random_",
    "uniform_",
    "normal_",
    "bernoulli_",
    "exponential_",
    "geometric_",
    "cauchy_",
    "log_normal_",
)

X = torch.tensor([1.5, -2.0, 3.25, 0.0, -7.5])
Y = torch.tensor([2.0, 4.0, -1.0, 5.5, -0.25])
A = torch.linspace(-2.0, 2.0, 12).reshape(3, 4)
B = torch.linspace(1.0, -1.5, 8).reshape(4, 2)


def _record_torch_sampling() -> tuple[list[tuple[str, bool]], Callable[[], None]]:
    """Wrap torch's samplers; return the call log (name, used a torch.Generator) and an undo."""
    calls: list[tuple[str, bool]] = []
    undo: list[tuple[object, str, object]] = []

    def wrap(owner: object, name: str) -> None:
        original = getattr(owner, name, None)
        if original is None:
            return

        def recorder(*args: Any, **kwargs: Any) -> Any:
            generator = kwargs.get("generator")
            positional = any(isinstance(arg, torch.Generator) for arg in args)
            calls.append((name, isinstance(generator, torch.Generator) or positional))
            return original(*args, **kwargs)

        setattr(owner, name, recorder)
        undo.append((owner, name, original))

    for name in _TORCH_SAMPLERS:
        wrap(torch, name)
    for name in _TENSOR_SAMPLERS:
        wrap(torch.Tensor, name)

    def restore() -> None:
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)

    return calls, restore


def _compute(rank: int) -> dict[str, Any]:
    """Party body: x*y, matmul, comparison, with every torch sampler watched."""
    crypten = backend.load()
    ttp = crypten.mpc.provider.ttp_provider
    calls, restore = _record_torch_sampling()
    try:
        x = crypten.cryptensor(X, src=0)
        y = crypten.cryptensor(Y, src=1)
        a = crypten.cryptensor(A, src=0)
        b = crypten.cryptensor(B, src=1)
        product = (x * y).get_plain_text()
        matmul = a.matmul(b).get_plain_text()
        greater = (x > y).get_plain_text()
    finally:
        restore()
    cpu = torch.device("cpu")
    gens = crypten.generators
    blank, blank_draws = _blank_and_its_draws(crypten)
    triple, ring_matmuls = _matmul_triple(crypten)
    return {
        "blank_type": type(blank._tensor).__name__,
        "blank_draws": blank_draws,
        "triple": triple,
        "ring_matmuls_for_the_triple": ring_matmuls,
        "product": product,
        "matmul": matmul,
        "greater": greater,
        "torch_sampling_calls": calls,
        "x_share": x._tensor.share.clone(),
        "generator_types": {
            role: sorted({type(gen).__name__ for gen in by_device.values()})
            for role, by_device in gens.items()
        },
        "ttp_generator_type": type(ttp.TTPClient.get().generator).__name__,
        # After identical sequences of draws, paired streams must still agree.
        "next_draw": gens["next"][cpu].random_ring(4),
        "prev_draw": gens["prev"][cpu].random_ring(4),
        "global_draw": gens["global"][cpu].random_ring(4),
        "local_draw": gens["local"][cpu].random_ring(4),
    }


def _blank_and_its_draws(crypten: Any) -> tuple[Any, int]:
    """`MPCTensor([])` (CrypTen's blank for copies) and how many zero sharings (PRZS) it ran."""
    shared = crypten.mpc.primitives.ArithmeticSharedTensor
    original, ran = shared.PRZS, []

    def counting(*args: Any, **kwargs: Any) -> Any:
        ran.append(args)
        return original(*args, **kwargs)

    shared.PRZS = staticmethod(counting)
    try:
        blank = crypten.mpc.MPCTensor([])
    finally:
        shared.PRZS = original
    return blank, len(ran)


def _matmul_triple(crypten: Any) -> tuple[list[torch.Tensor], int]:
    """A TTP matmul triple (a, b, c) revealed in the ring, and how many int64 matmuls this
    party ran to make its share (meta-tensor shape inference does not count)."""
    provider = crypten.mpc.get_default_provider()
    original, ran = torch.matmul, []

    def counting(*args: Any, **kwargs: Any) -> Any:
        if not args[0].is_meta:
            ran.append(args[0].shape)
        return original(*args, **kwargs)

    torch.matmul = counting
    try:
        triple = provider.generate_additive_triple((3, 4), (4, 5), "matmul")
    finally:
        torch.matmul = original
    return [t.get_plain_text() for t in triple], len(ran)


def _three_party_truncation(rank: int) -> dict[str, torch.Tensor]:
    """With 3 parties CrypTen truncates through the TTP's `wraps` (server-side PRSS)."""
    crypten = backend.load()
    x = crypten.cryptensor(X, src=2)
    return {"half": (x * 0.5).get_plain_text(), "square": x.square().get_plain_text()}


def _over_pipes(rank: int) -> dict[str, Any]:
    crypten = backend.load()
    x, y = crypten.cryptensor(X, src=0), crypten.cryptensor(Y, src=1)
    a, b = crypten.cryptensor(A, src=0), crypten.cryptensor(B, src=1)
    return {
        "product": (x * y).get_plain_text(),
        "matmul": a.matmul(b).get_plain_text(),
        "greater": (x > y).get_plain_text(),
        "communicator": type(crypten.communicator.get()).__name__,
        "torch_distributed": torch.distributed.is_initialized(),
    }


def _raise_on_rank_one(rank: int, message: str) -> int:
    if rank == 1:
        raise ValueError(message)
    return rank


def _sleep(rank: int, seconds: float) -> int:
    time.sleep(seconds)
    return rank


@pytest.fixture(scope="module")
def two_runs() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The same computation twice, 2 parties + TTP each (about 4 s per run on 2 cores)."""
    first = run_parties(_compute, world_size=2, ttp=True, timeout_s=RUN_TIMEOUT_S)
    second = run_parties(_compute, world_size=2, ttp=True, timeout_s=RUN_TIMEOUT_S)
    return first, second


def test_load_is_idempotent_and_installs_the_csprng() -> None:
    crypten = backend.load()
    assert backend.load() is crypten
    backend.install_csprng()
    backend.install_csprng()
    assert crypten._setup_prng is backend._setup_prng
    assert crypten.manual_seed is backend._refuse_manual_seed
    for module in backend._RNG_MODULES:
        mod = __import__(module, fromlist=["_"])
        ring = getattr(mod, "generate_random_ring_element", None)
        kbit = getattr(mod, "generate_kbit_random_tensor", None)
        assert ring in (None, backend._generate_random_ring_element), module
        assert kbit in (None, backend._generate_kbit_random_tensor), module
    ttp = crypten.mpc.provider.ttp_provider
    client_class = ttp.TTPClient._TTPClient__TTPClient
    assert client_class._setup_generators is backend._ttp_client_setup_generators
    assert ttp.TTPServer._setup_generators is backend._ttp_server_setup_generators
    assert isinstance(crypten.gradients.torch, backend._TorchWithCSPRNGRand)


def test_rng_helpers_refuse_torch_generators() -> None:
    crypten = backend.load()
    rng = crypten.common.rng
    with pytest.raises(InsecureRandomness, match="Generator"):
        rng.generate_random_ring_element((3,), generator=torch.Generator())
    with pytest.raises(InsecureRandomness, match="Generator"):
        rng.generate_kbit_random_tensor((3,), bitlength=1, generator=torch.Generator())
    with pytest.raises(InsecureRandomness, match="Generator"):
        crypten.gradients.torch.rand(3, generator=torch.Generator())
    with pytest.raises(InsecureRandomness, match="manual_seed"):
        crypten.manual_seed(1, 2, 3)


def test_rng_helpers_draw_from_the_csprng() -> None:
    rng = backend.load().common.rng
    gen = AESCTRGenerator(bytes(16))
    ring = rng.generate_random_ring_element(torch.Size([2, 3]), generator=gen, device="cpu")
    assert ring.dtype == torch.int64 and ring.shape == (2, 3)
    assert torch.equal(ring.flatten(), AESCTRGenerator(bytes(16)).random_ring(6))
    bits = rng.generate_kbit_random_tensor((100,), bitlength=1, generator=gen)
    assert set(bits.tolist()) <= {0, 1}
    full = rng.generate_kbit_random_tensor((4,), generator=gen)
    assert full.dtype == torch.int64 and full.shape == (4,)
    dropout = backend.load().gradients.torch.rand((5, 2), generator=gen)
    assert dropout.shape == (5, 2) and dropout.dtype == torch.float32


def test_two_parties_with_ttp_compute_correctly(two_runs: Any) -> None:
    for results in two_runs:
        for party in results:
            torch.testing.assert_close(party["product"], X * Y, atol=FIXED_POINT_ATOL, rtol=0)
            torch.testing.assert_close(party["matmul"], A @ B, atol=MATMUL_ATOL, rtol=0)
            assert torch.equal(party["greater"], (X > Y).long())


def test_blank_tensors_share_nothing(two_runs: Any) -> None:
    """Fix 9: CrypTen's blank `MPCTensor([])` no longer runs a sharing (no PRZS draw)."""
    for results in two_runs:
        for party in results:
            assert party["blank_type"] == "Tensor"  # a placeholder, not a sharing
            assert party["blank_draws"] == 0


def test_ttp_matmul_triples_are_correct_and_cost_party_one_no_matmul(two_runs: Any) -> None:
    """Fix 10: party 1 sizes its share of c by shape inference; the triple still satisfies
    c = a @ b in Z_2^64 (int64 matmul wraps the same way)."""
    for results in two_runs:
        for party in results:
            a, b, c = party["triple"]
            assert a.shape == (3, 4) and b.shape == (4, 5)
            assert torch.equal(c, a.long() @ b.long())
        assert results[1]["ring_matmuls_for_the_triple"] == 0


def test_no_torch_sampler_is_used_during_the_computation(two_runs: Any) -> None:
    for results in two_runs:
        for party in results:
            with_generator = [name for name, used in party["torch_sampling_calls"] if used]
            assert with_generator == []
            assert party["torch_sampling_calls"] == []  # not even torch's global generator


def test_crypten_generators_are_the_csprng_after_init(two_runs: Any) -> None:
    for results in two_runs:
        for party in results:
            assert party["generator_types"] == {
                role: ["AESCTRGenerator"] for role in ("prev", "next", "local", "global")
            }
            assert party["ttp_generator_type"] == "AESCTRGenerator"


def test_prss_streams_stay_paired(two_runs: Any) -> None:
    for party0, party1 in two_runs:
        assert torch.equal(party0["next_draw"], party1["prev_draw"])
        assert torch.equal(party1["next_draw"], party0["prev_draw"])
        assert torch.equal(party0["global_draw"], party1["global_draw"])
        assert not torch.equal(party0["local_draw"], party1["local_draw"])
        assert not torch.equal(party0["next_draw"], party0["prev_draw"])


def test_shares_reconstruct_and_are_fresh_per_run(two_runs: Any) -> None:
    first, second = two_runs
    encoded = (X * 2**PRECISION_BITS).round().long()
    for results in two_runs:
        assert torch.equal(results[0]["x_share"] + results[1]["x_share"], encoded)
    for rank in (0, 1):
        assert not torch.equal(first[rank]["x_share"], second[rank]["x_share"])
    assert not torch.equal(first[0]["global_draw"], second[0]["global_draw"])


def test_three_parties_with_ttp_truncate_and_square() -> None:
    results = run_parties(_three_party_truncation, world_size=3, timeout_s=RUN_TIMEOUT_S)
    for party in results:
        torch.testing.assert_close(party["half"], X * 0.5, atol=FIXED_POINT_ATOL, rtol=0)
        torch.testing.assert_close(party["square"], X * X, atol=FIXED_POINT_ATOL, rtol=0)


@pytest.mark.parametrize(("world_size", "ttp"), [(0, False), (1, True)])
def test_run_parties_rejects_unsupported_layouts(world_size: int, ttp: bool) -> None:
    with pytest.raises(ValueError, match="world_size"):
        run_parties(_sleep, world_size=world_size, ttp=ttp, args=(0.0,))


def test_pipe_transport_runs_crypten_over_our_communicator() -> None:
    results = run_parties(_over_pipes, world_size=2, timeout_s=RUN_TIMEOUT_S, transport="pipe")
    for party in results:
        torch.testing.assert_close(party["product"], X * Y, atol=FIXED_POINT_ATOL, rtol=0)
        torch.testing.assert_close(party["matmul"], A @ B, atol=MATMUL_ATOL, rtol=0)
        assert torch.equal(party["greater"], (X > Y).long())
        assert party["communicator"] == "TransportCommunicator"
        assert not party["torch_distributed"]  # no gloo at all


def test_pipe_transport_reraises_a_party_exception() -> None:
    with pytest.raises(ValueError, match="boom over pipes"):
        run_parties(
            _raise_on_rank_one, args=("boom over pipes",), timeout_s=RUN_TIMEOUT_S, transport="pipe"
        )


def test_run_parties_rejects_an_unknown_transport() -> None:
    with pytest.raises(ValueError, match="transport"):
        run_parties(_sleep, args=(0.0,), transport="carrier-pigeon")


def test_party_exception_is_reraised_with_its_message() -> None:
    with pytest.raises(ValueError, match="boom from the party") as info:
        run_parties(_raise_on_rank_one, args=("boom from the party",), timeout_s=RUN_TIMEOUT_S)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "party 1" in str(info.value.__cause__)


def test_timeout_kills_every_process() -> None:
    start = time.monotonic()
    with pytest.raises(PartyTimeout, match="did not finish"):
        run_parties(_sleep, args=(600.0,), timeout_s=TIMEOUT_TEST_S)
    assert time.monotonic() - start < TIMEOUT_TEST_S + 10.0
    assert [proc.name for proc in mp.active_children() if proc.name.startswith("mpc-")] == []
    assert issubclass(PartyTimeout, TimeoutError)
    assert not issubclass(PartyTimeout, PartyFailed)
