"""Secret weights with a fixed Beaver mask (`mpc.backends.crypten_weights`), 2 parties + TTP.

The products must equal the plaintext ones (to the truncation's last place), and the weight's
mask must be opened once: after setup, each product moves activation- and output-sized data,
never weight-sized.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mpc.backends import crypten as backend
from mpc.launch import run_parties

pytestmark = pytest.mark.multiparty

RUN_TIMEOUT_S = 180.0
K, M = 96, 160  # the weight (k, m)
ULP = 2.0**-16


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    weight = torch.randn(K, M, generator=g) * 0.2
    xs = torch.randn(3, 2, 5, K, generator=g) * 3  # three products of (2, 5, K) activations
    one_hot = torch.zeros(4, K)
    one_hot[torch.arange(4), torch.tensor([0, 17, 95, 17])] = 1.0
    return weight, xs, one_hot


def _encoded(values: torch.Tensor) -> torch.Tensor:
    """The values CrypTen's encoder holds: scaled by 2^16 and truncated toward zero."""
    return (values.double() / ULP).long().double() * ULP


def _party(rank: int) -> dict[str, Any]:
    crypten = backend.load()
    crypten.cfg.communicator.verbose = True
    from mpc.backends.crypten_weights import MaskedWeight, matmul

    comm = crypten.communicator.get()
    weight, xs, one_hot = _inputs()
    if rank != 0:  # only the owner's values are used
        weight, xs, one_hot = (
            torch.zeros_like(weight),
            torch.zeros_like(xs),
            torch.zeros_like(one_hot),
        )
    comm.reset_communication_stats()
    masked = MaskedWeight(crypten.cryptensor(weight, src=0))
    setup = comm.get_communication_stats()
    products, per_product = [], []
    for x in xs:
        secret = crypten.cryptensor(x, src=0)
        comm.reset_communication_stats()
        out = matmul(secret, masked)
        per_product.append(comm.get_communication_stats()["bytes"])
        products.append(out.get_plain_text())
    selector = crypten.cryptensor(one_hot, src=0, precision=0)  # a secret integer one-hot
    rows = matmul(selector, masked)
    return {
        "setup_bytes": setup["bytes"],
        "product_bytes": per_product,
        "products": torch.stack(products),
        "rows": rows.get_plain_text(),
        "rows_scale": int(rows.encoder.scale),
    }


@pytest.fixture(scope="module")
def run() -> list[dict[str, Any]]:
    return run_parties(_party, world_size=2, ttp=True, timeout_s=RUN_TIMEOUT_S)


def test_products_match_plaintext(run: list[dict[str, Any]]) -> None:
    weight, xs, _ = _inputs()
    want = _encoded(xs) @ _encoded(weight)
    for result in run:
        err = (result["products"].double() - want).abs().max().item()
        assert err <= 4 * ULP, err


def test_an_integer_selector_picks_exact_rows(run: list[dict[str, Any]]) -> None:
    weight, _, one_hot = _inputs()
    want = _encoded(weight)
    rows = one_hot.argmax(1)
    for result in run:
        assert result["rows_scale"] == 2**16  # the weight's precision, no truncation
        assert torch.equal(result["rows"].double(), want[rows])


def test_the_weight_mask_is_opened_once(run: list[dict[str, Any]]) -> None:
    """Party 1 (which never talks to the dealer) sends and receives: at setup the weight's
    k m elements each way; per product only x's elements and the truncation's openings."""
    party1 = run[1]
    weight_bytes = 2 * 8 * K * M
    assert party1["setup_bytes"] >= weight_bytes
    activation = 2 * 5 * K
    output = 2 * 5 * M
    for sent_and_received in party1["product_bytes"]:
        assert sent_and_received == 2 * 8 * (activation + output), sent_and_received
        assert sent_and_received < weight_bytes / 5
