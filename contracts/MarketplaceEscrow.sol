// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {HostEarnings} from "./HostEarnings.sol";
import {ModelRegistry} from "./ModelRegistry.sol";
import {NodeRegistry} from "./NodeRegistry.sol";

/// @title MarketplaceEscrow
/// @notice What open jobs and sessions share: the wiring, escrow in ETH (token address(0)) or
///         an ERC20, the settlement of a charge, and pull payments.
///         Settling a charge: the fee (feeBps of the charge, rounded down) and the client's
///         refund (escrow - charge) become `claimable` balances here that their owners
///         withdraw; the host's share (charge - fee) is credited to it in HostEarnings at once.
///         Tokens that take a fee on transfer or rebase are not supported.
abstract contract MarketplaceEscrow {
    uint256 internal constant BPS = 10_000;
    /// Prices are per million tokens (DESIGN §11.3).
    uint256 internal constant PRICE_UNIT_TOKENS = 1_000_000;
    address internal constant ETH = address(0);

    NodeRegistry public immutable nodeRegistry;
    ModelRegistry public immutable modelRegistry;
    HostEarnings public immutable hostEarnings;
    /// Where fees accrue (as a claimable balance).
    address public immutable treasury;
    /// Who resolves challenges.
    address public immutable arbiter;
    /// The fee in basis points of each charge.
    uint256 public immutable feeBps;

    /// What an account may withdraw, per token: refunds, fees, bonds, slashed stake.
    mapping(address => mapping(address => uint256)) public claimable;
    uint256 private _locked = 1;

    event Withdrawn(address indexed account, address indexed token, uint256 amount);

    error Reentrancy();
    error ZeroAddress();
    error FeeTooHigh(uint256 feeBps);
    error ValueMismatch(uint256 sent, uint256 expected);
    error TokenTransferFailed(address token);
    error EthTransferFailed(address to, uint256 amount);
    error NothingToWithdraw(address account, address token);
    error UnexpectedEth(address sender);
    error ModelNotApproved(bytes32 modelId);
    error NotRegistered(address host);
    error ModelNotServed(address host, bytes32 modelId);
    error TokenNotPriced(address host, address token, address priceToken);
    error StakeBelowMinimum(address host, uint256 stake, uint256 minimum);

    modifier nonReentrant() {
        if (_locked != 1) revert Reentrancy();
        _locked = 2;
        _;
        _locked = 1;
    }

    constructor(
        NodeRegistry nodes,
        HostEarnings earnings,
        address treasury_,
        address arbiter_,
        uint256 feeBps_
    ) {
        if (
            address(nodes) == address(0) ||
            address(earnings) == address(0) ||
            treasury_ == address(0) ||
            arbiter_ == address(0)
        ) revert ZeroAddress();
        if (feeBps_ > BPS) revert FeeTooHigh(feeBps_);
        nodeRegistry = nodes;
        modelRegistry = nodes.modelRegistry();
        hostEarnings = earnings;
        treasury = treasury_;
        arbiter = arbiter_;
        feeBps = feeBps_;
    }

    /// @notice Only slashed stake arrives as plain ETH (from NodeRegistry.slash).
    receive() external payable {
        if (msg.sender != address(nodeRegistry)) revert UnexpectedEth(msg.sender);
    }

    /// @notice Pays the caller its whole claimable balance of `token` (address(0) = ETH).
    function withdraw(address token) external nonReentrant {
        uint256 amount = claimable[msg.sender][token];
        if (amount == 0) revert NothingToWithdraw(msg.sender, token);
        claimable[msg.sender][token] = 0;
        emit Withdrawn(msg.sender, token, amount);
        if (token == ETH) {
            (bool ok, ) = payable(msg.sender).call{value: amount}("");
            if (!ok) revert EthTransferFailed(msg.sender, amount);
        } else {
            _call(token, abi.encodeWithSelector(0xa9059cbb, msg.sender, amount));
        }
    }

    /// @dev Check: ETH escrow comes as msg.value; an ERC20 escrow must come with no ETH.
    function _checkValue(address token, uint256 amount) internal view {
        uint256 expected = token == ETH ? amount : 0;
        if (msg.value != expected) revert ValueMismatch(msg.value, expected);
    }

    /// @dev Interaction: pull an ERC20 escrow from the caller (approve first); ETH is in already.
    function _pullEscrow(address token, uint256 amount) internal {
        if (token != ETH) {
            _call(token, abi.encodeWithSelector(0x23b872dd, msg.sender, address(this), amount));
        }
    }

    /// @dev The price `host` charges for `modelId` in `token`, refusing hosts that may not take
    ///      the work: a host's prices are in its one price token, so work paid in another
    ///      token is refused rather than paid in the wrong base units.
    function _hostPrice(
        address host,
        bytes32 modelId,
        address token
    ) internal view returns (uint256 price) {
        if (!modelRegistry.isApproved(modelId)) revert ModelNotApproved(modelId);
        if (!nodeRegistry.isRegistered(host)) revert NotRegistered(host);
        price = nodeRegistry.priceOf(host, modelId);
        if (price == 0) revert ModelNotServed(host, modelId);
        address priceToken = nodeRegistry.priceTokenOf(host);
        if (priceToken != token) revert TokenNotPriced(host, token, priceToken);
        uint256 stake = nodeRegistry.stakeOf(host);
        uint256 minimum = nodeRegistry.minStake();
        if (stake < minimum) revert StakeBelowMinimum(host, stake, minimum);
    }

    /// @dev tokens × price / 1e6, rounded down, capped by the escrow.
    function _charge(
        uint256 tokens,
        uint256 pricePerMillion,
        uint256 escrow
    ) internal pure returns (uint256 charge) {
        charge = (tokens * pricePerMillion) / PRICE_UNIT_TOKENS;
        if (charge > escrow) charge = escrow;
    }

    /// @dev Splits `charge` out of `escrow` and books the fee and the refund as claimable;
    ///      the caller then emits its event and credits `hostAmount` with _creditHost.
    function _split(
        address client,
        address token,
        uint256 escrow,
        uint256 charge
    ) internal returns (uint256 fee, uint256 hostAmount, uint256 refund) {
        fee = (charge * feeBps) / BPS;
        hostAmount = charge - fee;
        refund = escrow - charge;
        if (fee != 0) claimable[treasury][token] += fee;
        if (refund != 0) claimable[client][token] += refund;
    }

    /// @dev HostEarnings takes ETH as value and pulls an ERC20 through an allowance.
    function _creditHost(address host, address token, uint256 amount) internal {
        if (amount == 0) return;
        if (token == ETH) {
            hostEarnings.credit{value: amount}(host, ETH, amount);
        } else {
            _call(token, abi.encodeWithSelector(0x095ea7b3, address(hostEarnings), amount));
            hostEarnings.credit(host, token, amount);
        }
    }

    /// @dev Accepts tokens that return true and tokens that return nothing (USDT style).
    function _call(address token, bytes memory data) private {
        if (token.code.length == 0) revert TokenTransferFailed(token);
        (bool ok, bytes memory ret) = token.call(data);
        if (!ok || (ret.length != 0 && !abi.decode(ret, (bool)))) revert TokenTransferFailed(token);
    }
}
