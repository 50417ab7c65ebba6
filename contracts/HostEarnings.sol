// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {NodeRegistry} from "./NodeRegistry.sol";

/// @title HostEarnings
/// @notice What hosts have earned, per (host, token); token address(0) is ETH. Only the
///         marketplace the owner names (once) credits; the host pulls its whole balance with
///         withdraw(token), paid to its payout address in NodeRegistry (or to itself if none).
contract HostEarnings {
    address public immutable owner;
    NodeRegistry public immutable nodeRegistry;
    address public marketplace;

    mapping(address => mapping(address => uint256)) public balanceOf;
    uint256 private _locked = 1;

    event MarketplaceSet(address indexed previous, address indexed marketplace);
    event Credited(address indexed host, address indexed token, uint256 amount);
    event Withdrawn(address indexed host, address indexed token, address to, uint256 amount);

    error Reentrancy();
    error NotOwner(address caller);
    error NotMarketplace(address caller);
    error ZeroAddress();
    error ZeroAmount();
    error ValueMismatch(uint256 sent, uint256 amount);
    error NothingToWithdraw(address host, address token);
    error EthTransferFailed(address to, uint256 amount);
    error TokenTransferFailed(address token);
    error MarketplaceAlreadySet(address marketplace);

    modifier nonReentrant() {
        if (_locked != 1) revert Reentrancy();
        _locked = 2;
        _;
        _locked = 1;
    }

    constructor(NodeRegistry registry) {
        owner = msg.sender;
        nodeRegistry = registry;
    }

    /// @notice Names the marketplace, once: re-pointing it would strand every live job of the
    ///         old one, whose credits would then be refused.
    function setMarketplace(address newMarketplace) external {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        if (newMarketplace == address(0)) revert ZeroAddress();
        if (marketplace != address(0)) revert MarketplaceAlreadySet(marketplace);
        emit MarketplaceSet(marketplace, newMarketplace);
        marketplace = newMarketplace;
    }

    /// @notice ETH arrives as msg.value; an ERC20 is pulled from the marketplace (approve first).
    function credit(address host, address token, uint256 amount) external payable nonReentrant {
        if (msg.sender != marketplace) revert NotMarketplace(msg.sender);
        if (host == address(0)) revert ZeroAddress();
        if (amount == 0) revert ZeroAmount();
        if (token == address(0)) {
            if (msg.value != amount) revert ValueMismatch(msg.value, amount);
        } else {
            if (msg.value != 0) revert ValueMismatch(msg.value, 0);
            _call(token, abi.encodeWithSelector(0x23b872dd, msg.sender, address(this), amount));
        }
        balanceOf[host][token] += amount;
        emit Credited(host, token, amount);
    }

    function withdraw(address token) external nonReentrant {
        uint256 amount = balanceOf[msg.sender][token];
        if (amount == 0) revert NothingToWithdraw(msg.sender, token);
        address to = nodeRegistry.payoutOf(msg.sender);
        if (to == address(0)) to = msg.sender;
        balanceOf[msg.sender][token] = 0;
        emit Withdrawn(msg.sender, token, to, amount);
        if (token == address(0)) {
            (bool ok, ) = payable(to).call{value: amount}("");
            if (!ok) revert EthTransferFailed(to, amount);
        } else {
            _call(token, abi.encodeWithSelector(0xa9059cbb, to, amount));
        }
    }

    /// @dev Accepts tokens that return true and tokens that return nothing (USDT style).
    function _call(address token, bytes memory data) private {
        if (token.code.length == 0) revert TokenTransferFailed(token);
        (bool ok, bytes memory ret) = token.call(data);
        if (!ok || (ret.length != 0 && !abi.decode(ret, (bool)))) revert TokenTransferFailed(token);
    }
}
