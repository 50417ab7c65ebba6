"""What a transaction will cost before it is signed: gas, capped EIP-1559 fees, L1 data fee."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.exceptions import ContractLogicError, Web3RPCError
from web3.types import TxParams, Wei

from fabstir_tui.engine.chain.fees import (
    GAS_PRICE_ORACLE,
    FeeQuote,
    decode_uint256,
    get_l1_fee_calldata,
    quote_fees,
    serialize_unsigned_1559,
)
from fabstir_tui.engine.chain.reverts import RevertDecoder, rpc_error_message
from fabstir_tui.engine.chain.txerrors import TxError, TxRevertedError, guarded
from fabstir_tui.engine.chain.txtypes import TxCall, TxPreview, decode_args

GAS_MARGIN_PCT = 20  # an estimate is exact for the state it ran on; the state moves


def tx_dict(
    chain_id: int, call: TxCall, value: int, nonce: int, gas: int, max_fee: int, tip: int
) -> dict[str, Any]:
    """The EIP-1559 fields eth_account signs (and the L1 fee oracle prices)."""
    return {
        "type": 2,
        "chainId": chain_id,
        "nonce": nonce,
        "to": call.to,
        "value": value,
        "data": call.data,
        "gas": gas,
        "maxFeePerGas": max_fee,
        "maxPriorityFeePerGas": tip,
    }


@dataclass
class Previewer:
    """Fee and gas questions for one account on one chain."""

    w3: AsyncWeb3[Any]
    address: str
    chain_id: int
    cap_wei: int
    tip_wei: int
    l1_fee_on: bool
    decoder: RevertDecoder
    url: str

    async def base_fee(self) -> int:
        """The next block's base fee (eth_feeHistory's last entry), else the latest block's."""
        history = await guarded(
            self.url, "reading the base fee", self.w3.eth.fee_history(1, "latest")
        )
        fees = list(history.get("baseFeePerGas") or [])
        if fees:
            return int(fees[-1])
        block = await guarded(self.url, "reading the latest block", self.w3.eth.get_block("latest"))
        if block.get("baseFeePerGas") is None:
            raise TxError(f"chain {self.chain_id} has no EIP-1559 base fee; it is not supported")
        return int(block["baseFeePerGas"])

    async def quote(self) -> FeeQuote:
        """Fees for a transaction signed now, under the operator's cap."""
        return quote_fees(await self.base_fee(), self.cap_wei, self.tip_wei)

    async def l1_fee(self, unsigned_tx: bytes, block: int | Literal["latest"] = "latest") -> int:
        """GasPriceOracle.getL1Fee of a serialized transaction (OP-stack chains)."""
        params: TxParams = {"to": GAS_PRICE_ORACLE, "data": get_l1_fee_calldata(unsigned_tx)}
        result = await guarded(
            self.url, "asking the GasPriceOracle for the L1 fee", self.w3.eth.call(params, block)
        )
        if len(result) < 32:
            raise TxError(
                f"chain.l1_fee is on but chain {self.chain_id} has no GasPriceOracle at "
                f'{GAS_PRICE_ORACLE}; set chain.l1_fee = "off" for chains that are not OP-stack'
            )
        return decode_uint256(bytes(result))

    async def estimate(self, call: TxCall, value: int) -> int:
        """eth_estimateGas; a revert becomes TxRevertedError with the decoded reason."""
        params: TxParams = {
            "from": self.address,
            "to": call.to,
            "data": HexBytes(call.data),
            "value": Wei(value),
        }
        doing = f"estimating gas for {call.description}"
        try:
            return int(await guarded(self.url, doing, self.w3.eth.estimate_gas(params)))
        except ContractLogicError as exc:
            reason = self.decoder.from_exception(exc, call.contract) or str(exc)
            raise TxRevertedError(f"{call.description} would fail: {reason}", reason) from exc
        except Web3RPCError as exc:
            found = self.decoder.from_exception(exc, call.contract)
            if found is not None:
                raise TxRevertedError(f"{call.description} would fail: {found}", found) from exc
            message = rpc_error_message(exc)
            if "insufficient funds" in message.lower():
                raise TxError(
                    f"the account {self.address} cannot pay for {call.description} "
                    f"({message}); fund it with ETH for the value and gas"
                ) from exc
            raise TxError(
                f"the node refused to estimate gas for {call.description}: {message}"
            ) from exc

    async def preview(
        self, call: TxCall, value: int, gas: int | None, nonce_hint: int
    ) -> TxPreview:
        """Everything the operator confirms before signing (see TxSender.preview)."""
        fees = await self.quote()
        estimate = gas if gas is not None else await self.estimate(call, value)
        gas_limit = gas if gas is not None else estimate * (100 + GAS_MARGIN_PCT) // 100
        l1 = 0
        if self.l1_fee_on:
            fields = tx_dict(
                self.chain_id,
                call,
                value,
                nonce_hint,
                gas_limit,
                fees.max_fee_per_gas_wei,
                fees.priority_fee_wei,
            )
            l1 = await self.l1_fee(serialize_unsigned_1559(fields))
        return TxPreview(
            chain_id=self.chain_id,
            sender=self.address,
            contract=call.contract or call.to,
            address=call.to,
            function=call.function,
            args=decode_args(call),
            data=call.data,
            value_wei=value,
            gas_estimate=estimate,
            gas_limit=gas_limit,
            base_fee_wei=fees.base_fee_wei,
            max_fee_per_gas_wei=fees.max_fee_per_gas_wei,
            priority_fee_wei=fees.priority_fee_wei,
            fee_capped=fees.capped,
            l1_fee_wei=l1,
        )
