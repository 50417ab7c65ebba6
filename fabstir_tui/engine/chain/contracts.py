"""Our contracts as the node uses them: reads (registration, balances, token facts, notes for
the signing dialog) and the calls that carry out operator actions."""

from __future__ import annotations

from typing import Any

from web3 import AsyncWeb3

from fabstir_tui.config import ChainSection
from fabstir_tui.engine.chain.actions import (
    ETH,
    ChainAction,
    ChainUnavailableError,
    Register,
    SetPrice,
    TxNote,
    Unregister,
    UpdateMetadata,
    UpdateModels,
    Withdraw,
    model_id_bytes,
)
from fabstir_tui.engine.chain.artifacts import load_artifact
from fabstir_tui.engine.chain.events import TokenBalance
from fabstir_tui.engine.chain.ledger import TokenEarnings

# Our contracts and the config keys that hold their addresses.
CONTRACTS = {
    "NodeRegistry": "node_registry",
    "ModelRegistry": "model_registry",
    "HostEarnings": "host_earnings",
    "JobMarketplace": "job_marketplace",
}


class ChainContracts:
    """Reads and call building for our configured contracts; token facts are cached."""

    def __init__(self, chain: ChainSection) -> None:
        self.chain = chain
        self._tokens: dict[str, tuple[str, int]] = {ETH: ("ETH", 18)}
        self._immutables: dict[tuple[str, str], int] = {}

    def spec(self) -> dict[str, tuple[str, list[dict[str, Any]]]]:
        """Name -> (address, ABI) of every configured contract, for the follower."""
        spec: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        for name, key in CONTRACTS.items():
            address = str(getattr(self.chain, key))
            if address:
                spec[name] = (address, load_artifact(name).abi)
        return spec

    def contract(self, w3: AsyncWeb3[Any], name: str) -> Any:
        """One of our contracts at its configured address."""
        address = str(getattr(self.chain, CONTRACTS[name]))
        return w3.eth.contract(address=address, abi=load_artifact(name).abi)  # type: ignore[call-overload]

    async def token_info(self, w3: AsyncWeb3[Any], token: str) -> tuple[str, int]:
        """Symbol and decimals, read once per token (a token without them shows its address)."""
        known = self._tokens.get(token)
        if known is not None:
            return known
        abi = load_artifact("FabstirTestToken").abi
        contract = w3.eth.contract(address=token, abi=abi)  # type: ignore[call-overload]
        try:
            info = (
                str(await contract.functions.symbol().call()),
                int(await contract.functions.decimals().call()),
            )
        except Exception:
            info = (token[:10], 18)
        self._tokens[token] = info
        return info

    async def immutable(self, w3: AsyncWeb3[Any], contract: str, getter: str) -> int:
        """A value fixed at deployment (fee bps, minimum stake): read once, not per refresh."""
        key = (contract, getter)
        if key not in self._immutables:
            call = getattr(self.contract(w3, contract).functions, getter)()
            self._immutables[key] = int(await call.call())
        return self._immutables[key]

    async def registration(self, w3: AsyncWeb3[Any], address: str) -> dict[str, Any]:
        """Our registration as the status shows it (not registered: only the minimum stake)."""
        nodes = self.contract(w3, "NodeRegistry")
        min_stake = await self.immutable(w3, "NodeRegistry", "minStake")
        if not address:
            return {"min_stake_wei": min_stake}
        node = await nodes.functions.getNode(address).call()
        stake, payout, metadata, models, active = node[:5]
        prices = []
        for model in models:
            price = int(await nodes.functions.priceOf(address, model).call())
            prices.append(("0x" + bytes(model).hex(), price))
        return {
            "registered": bool(active),
            "stake_wei": int(stake),
            "min_stake_wei": min_stake,
            "payout": str(payout) if active else "",
            "metadata": str(metadata),
            "models": tuple(prices),
            "price_token": str(node[5]) if active else "",
        }

    async def balances(
        self, w3: AsyncWeb3[Any], address: str, summary: dict[str, TokenEarnings]
    ) -> tuple[TokenBalance, ...]:
        """Per token: withdrawable from HostEarnings, the rest from our ledger's figures."""
        tokens = [ETH]
        if self.chain.payment_token:
            tokens.append(AsyncWeb3.to_checksum_address(self.chain.payment_token))
        tokens += [t for t in summary if t.lower() not in {x.lower() for x in tokens}]
        earnings = self.contract(w3, "HostEarnings") if self.chain.host_earnings else None
        out = []
        for token in tokens:
            symbol, decimals = await self.token_info(w3, token)
            withdrawable = 0
            if earnings is not None and address:
                withdrawable = int(await earnings.functions.balanceOf(address, token).call())
            figures = next((v for k, v in summary.items() if k.lower() == token.lower()), None)
            out.append(
                TokenBalance(
                    token=token,
                    symbol=symbol,
                    decimals=decimals,
                    withdrawable=withdrawable,
                    **(
                        {
                            "held_in_escrow": figures.held_in_escrow,
                            "jobs_awaiting_release": figures.jobs_awaiting_release,
                            "earned_today": figures.earned_today,
                            "earned_7d": figures.earned_7d,
                            "earned_total": figures.earned_total,
                            "withdrawn_total": figures.withdrawn_total,
                        }
                        if figures is not None
                        else {}
                    ),
                )
            )
        return tuple(out)

    async def notes(
        self, action: ChainAction, w3: AsyncWeb3[Any], address: str
    ) -> tuple[TxNote, ...]:
        """Money the call moves that its arguments do not show: read now from the chain."""
        if isinstance(action, Withdraw):
            symbol, decimals = await self.token_info(w3, action.token)
            earnings = self.contract(w3, "HostEarnings").functions
            amount = int(await earnings.balanceOf(address, action.token).call())
            payout = ""
            if self.chain.node_registry:
                nodes = self.contract(w3, "NodeRegistry").functions
                payout = str(await nodes.payoutOf(address).call())
            to = payout if payout and int(payout, 16) else address
            return (
                TxNote("amount", amount=amount, symbol=symbol, decimals=decimals),
                TxNote("pays to", text=to),
            )
        if isinstance(action, Unregister):
            stake = int(await self.contract(w3, "NodeRegistry").functions.stakeOf(address).call())
            return (TxNote("stake back", amount=stake, symbol="ETH"),)
        if isinstance(action, Register):
            symbol, decimals = await self.token_info(w3, action.price_token)
            return (TxNote("paid in", text=f"{symbol} ({action.price_token})"),)
        return ()

    def call_for(self, action: ChainAction, w3: AsyncWeb3[Any]) -> tuple[Any, int]:
        """The contract call and value that carry out an action."""
        if isinstance(action, Withdraw):
            if not self.chain.host_earnings:
                raise ChainUnavailableError("chain.host_earnings is not set")
            return self.contract(w3, "HostEarnings").functions.withdraw(action.token), 0
        if not self.chain.node_registry:
            raise ChainUnavailableError("chain.node_registry is not set")
        nodes = self.contract(w3, "NodeRegistry").functions
        match action:
            case Register():
                ids = [model_id_bytes(m) for m, _ in action.models]
                prices = [p for _, p in action.models]
                call = nodes.register(
                    ids, prices, action.price_token, action.payout, action.metadata
                )
                return call, action.stake_wei
            case UpdateModels():
                ids = [model_id_bytes(m) for m, _ in action.models]
                return nodes.setModels(ids, [p for _, p in action.models]), 0
            case SetPrice():
                return nodes.setPrice(model_id_bytes(action.model_id), action.price_per_million), 0
            case UpdateMetadata():
                return nodes.setMetadata(action.metadata), 0
            case Unregister():
                return nodes.unregister(), 0
        raise AssertionError(action)
