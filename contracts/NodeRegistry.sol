// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ModelRegistry} from "./ModelRegistry.sol";

/// @title NodeRegistry
/// @notice Hosts register with an ETH stake, the approved models they serve, a price per model
///         (per million tokens, payment token base units), a payout address and metadata.
contract NodeRegistry {
    struct Node {
        uint256 stake;
        address payout;
        string metadata;
        bytes32[] models;
        bool active;
    }

    ModelRegistry public immutable modelRegistry;
    uint256 public immutable minStake;

    mapping(address => Node) private _nodes;
    mapping(address => mapping(bytes32 => uint256)) private _pricePerMillion;
    /// Kept after unregistration so earnings still reach the payout address.
    mapping(address => address) private _lastPayout;
    uint256 private _locked = 1;

    event NodeRegistered(address indexed host, uint256 stake, address payout, string metadata);
    event NodeUnregistered(address indexed host, uint256 stakeReturned);
    event StakeAdded(address indexed host, uint256 amount, uint256 total);
    event ModelsUpdated(address indexed host, bytes32[] models);
    event ModelPriceSet(address indexed host, bytes32 indexed modelId, uint256 pricePerMillion);
    event PayoutUpdated(address indexed host, address payout);
    event MetadataUpdated(address indexed host, string metadata);

    error Reentrancy();
    error AlreadyRegistered(address host);
    error NotRegistered(address host);
    error StakeTooLow(uint256 sent, uint256 minimum);
    error ZeroAmount();
    error ZeroPayout();
    error NoModels();
    error LengthMismatch(uint256 models, uint256 prices);
    error ModelNotApproved(bytes32 modelId);
    error DuplicateModel(bytes32 modelId);
    error ZeroPrice(bytes32 modelId);
    error ModelNotServed(address host, bytes32 modelId);
    error StakeTransferFailed(address to, uint256 amount);

    modifier nonReentrant() {
        if (_locked != 1) revert Reentrancy();
        _locked = 2;
        _;
        _locked = 1;
    }

    modifier onlyRegistered() {
        if (!_nodes[msg.sender].active) revert NotRegistered(msg.sender);
        _;
    }

    constructor(ModelRegistry registry, uint256 minimumStake) {
        modelRegistry = registry;
        minStake = minimumStake;
    }

    function register(
        bytes32[] calldata models,
        uint256[] calldata pricesPerMillion,
        address payout,
        string calldata metadata
    ) external payable {
        Node storage node = _nodes[msg.sender];
        if (node.active) revert AlreadyRegistered(msg.sender);
        if (msg.value < minStake) revert StakeTooLow(msg.value, minStake);
        if (payout == address(0)) revert ZeroPayout();
        node.active = true;
        node.stake = msg.value;
        node.payout = payout;
        node.metadata = metadata;
        _lastPayout[msg.sender] = payout;
        emit NodeRegistered(msg.sender, msg.value, payout, metadata);
        _setModels(node, models, pricesPerMillion);
    }

    function setModels(
        bytes32[] calldata models,
        uint256[] calldata pricesPerMillion
    ) external onlyRegistered {
        Node storage node = _nodes[msg.sender];
        bytes32[] storage old = node.models;
        for (uint256 i = 0; i < old.length; i++) {
            delete _pricePerMillion[msg.sender][old[i]];
        }
        delete node.models;
        _setModels(node, models, pricesPerMillion);
    }

    function setPrice(bytes32 modelId, uint256 pricePerMillion) external onlyRegistered {
        if (_pricePerMillion[msg.sender][modelId] == 0) revert ModelNotServed(msg.sender, modelId);
        if (pricePerMillion == 0) revert ZeroPrice(modelId);
        _pricePerMillion[msg.sender][modelId] = pricePerMillion;
        emit ModelPriceSet(msg.sender, modelId, pricePerMillion);
    }

    function setPayout(address payout) external onlyRegistered {
        if (payout == address(0)) revert ZeroPayout();
        _nodes[msg.sender].payout = payout;
        _lastPayout[msg.sender] = payout;
        emit PayoutUpdated(msg.sender, payout);
    }

    function setMetadata(string calldata metadata) external onlyRegistered {
        _nodes[msg.sender].metadata = metadata;
        emit MetadataUpdated(msg.sender, metadata);
    }

    function addStake() external payable onlyRegistered {
        if (msg.value == 0) revert ZeroAmount();
        uint256 total = _nodes[msg.sender].stake + msg.value;
        _nodes[msg.sender].stake = total;
        emit StakeAdded(msg.sender, msg.value, total);
    }

    /// @notice Returns the whole stake to the host (msg.sender); checks-effects-interactions.
    function unregister() external nonReentrant onlyRegistered {
        Node storage node = _nodes[msg.sender];
        uint256 stake = node.stake;
        bytes32[] storage models = node.models;
        for (uint256 i = 0; i < models.length; i++) {
            delete _pricePerMillion[msg.sender][models[i]];
        }
        delete _nodes[msg.sender];
        emit NodeUnregistered(msg.sender, stake);
        (bool ok, ) = payable(msg.sender).call{value: stake}("");
        if (!ok) revert StakeTransferFailed(msg.sender, stake);
    }

    function isRegistered(address host) external view returns (bool) {
        return _nodes[host].active;
    }

    function getNode(
        address host
    )
        external
        view
        returns (
            uint256 stake,
            address payout,
            string memory metadata,
            bytes32[] memory models,
            bool active
        )
    {
        Node storage node = _nodes[host];
        return (node.stake, node.payout, node.metadata, node.models, node.active);
    }

    /// @notice Price per million tokens in base units; 0 means the host does not serve it.
    function priceOf(address host, bytes32 modelId) external view returns (uint256) {
        return _pricePerMillion[host][modelId];
    }

    function serves(address host, bytes32 modelId) external view returns (bool) {
        return _pricePerMillion[host][modelId] != 0;
    }

    /// @notice Where the host's earnings go: its last payout address, even after unregistering.
    function payoutOf(address host) external view returns (address) {
        return _lastPayout[host];
    }

    function _setModels(
        Node storage node,
        bytes32[] calldata models,
        uint256[] calldata prices
    ) private {
        if (models.length == 0) revert NoModels();
        if (models.length != prices.length) revert LengthMismatch(models.length, prices.length);
        for (uint256 i = 0; i < models.length; i++) {
            bytes32 id = models[i];
            if (!modelRegistry.isApproved(id)) revert ModelNotApproved(id);
            if (prices[i] == 0) revert ZeroPrice(id);
            if (_pricePerMillion[msg.sender][id] != 0) revert DuplicateModel(id);
            _pricePerMillion[msg.sender][id] = prices[i];
            node.models.push(id);
            emit ModelPriceSet(msg.sender, id, prices[i]);
        }
        emit ModelsUpdated(msg.sender, models);
    }
}
