// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ModelRegistry} from "./ModelRegistry.sol";

/// @title NodeRegistry
/// @notice Hosts register with an ETH stake, the approved models they serve, a price per model
///         (per million tokens, in base units of the host's one price token), the price token
///         (address(0) = ETH; the marketplace refuses work paid in any other token), a payout
///         address and metadata.
///         The owner names one marketplace once wired; the marketplace marks a host's open work
///         (a claimed job: sessions are never slashed, so they do not count) and may slash its
///         stake when a challenge against it is upheld. A host with open work cannot unregister,
///         so its stake stays slashable.
contract NodeRegistry {
    struct Node {
        uint256 stake;
        address payout;
        string metadata;
        bytes32[] models;
        bool active;
        /// The token its prices are denominated in (address(0) = ETH).
        address priceToken;
    }

    address public immutable owner;
    ModelRegistry public immutable modelRegistry;
    uint256 public immutable minStake;
    address public marketplace;

    mapping(address => Node) private _nodes;
    mapping(address => mapping(bytes32 => uint256)) private _pricePerMillion;
    /// Kept after unregistration so earnings still reach the payout address.
    mapping(address => address) private _lastPayout;
    /// Jobs claimed that the marketplace has not settled or given back yet.
    mapping(address => uint256) public openWorkOf;
    uint256 private _locked = 1;

    event NodeRegistered(address indexed host, uint256 stake, address payout, string metadata);
    event NodeUnregistered(address indexed host, uint256 stakeReturned);
    event StakeAdded(address indexed host, uint256 amount, uint256 total);
    event ModelsUpdated(address indexed host, bytes32[] models);
    event ModelPriceSet(address indexed host, bytes32 indexed modelId, uint256 pricePerMillion);
    event PayoutUpdated(address indexed host, address payout);
    event PriceTokenSet(address indexed host, address priceToken);
    event MetadataUpdated(address indexed host, string metadata);
    event MarketplaceSet(address indexed marketplace);
    event WorkOpened(address indexed host, uint256 openWork);
    event WorkClosed(address indexed host, uint256 openWork);
    event Slashed(address indexed host, uint256 amount, uint256 remainingStake, address to);

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
    error NotOwner(address caller);
    error NotMarketplace(address caller);
    error ZeroAddress();
    error MarketplaceAlreadySet(address marketplace);
    error OpenWork(address host, uint256 openWork);
    error NoOpenWork(address host);

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

    modifier onlyMarketplace() {
        if (msg.sender != marketplace) revert NotMarketplace(msg.sender);
        _;
    }

    constructor(ModelRegistry registry, uint256 minimumStake) {
        owner = msg.sender;
        modelRegistry = registry;
        minStake = minimumStake;
    }

    /// @notice Names the marketplace, once: a marketplace swapped later could strand the open
    ///         work the old one counted, or slash stakes under rules hosts never signed up to.
    function setMarketplace(address newMarketplace) external {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        if (newMarketplace == address(0)) revert ZeroAddress();
        if (marketplace != address(0)) revert MarketplaceAlreadySet(marketplace);
        marketplace = newMarketplace;
        emit MarketplaceSet(newMarketplace);
    }

    /// @notice Registers msg.sender with msg.value as stake; `pricesPerMillion` are in base
    ///         units of `priceToken` (address(0) = ETH), the only token it will be paid in.
    function register(
        bytes32[] calldata models,
        uint256[] calldata pricesPerMillion,
        address priceToken,
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
        node.priceToken = priceToken;
        _lastPayout[msg.sender] = payout;
        emit NodeRegistered(msg.sender, msg.value, payout, metadata);
        emit PriceTokenSet(msg.sender, priceToken);
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

    /// @notice Names the token the host's prices are in from now on (address(0) = ETH).
    ///         Jobs already claimed keep the price and token they were claimed with; set
    ///         prices to match the new token's base units (setModels or setPrice).
    function setPriceToken(address priceToken) external onlyRegistered {
        _nodes[msg.sender].priceToken = priceToken;
        emit PriceTokenSet(msg.sender, priceToken);
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
    ///         Refused while the host has open work, so a pending challenge can still slash it.
    function unregister() external nonReentrant onlyRegistered {
        uint256 work = openWorkOf[msg.sender];
        if (work != 0) revert OpenWork(msg.sender, work);
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

    /// @notice The marketplace marks a job claimed by `host`.
    function openWork(address host) external onlyMarketplace {
        if (!_nodes[host].active) revert NotRegistered(host);
        uint256 work = openWorkOf[host] + 1;
        openWorkOf[host] = work;
        emit WorkOpened(host, work);
    }

    /// @notice The marketplace marks that a job of `host` is settled or given back.
    function closeWork(address host) external onlyMarketplace {
        uint256 work = openWorkOf[host];
        if (work == 0) revert NoOpenWork(host);
        openWorkOf[host] = work - 1;
        emit WorkClosed(host, work - 1);
    }

    /// @notice Takes up to `amount` of the host's stake (all of it if less remains) and sends
    ///         it to the marketplace, which decides who gets it. The host stays registered;
    ///         the marketplace refuses new work below minStake until the host tops up.
    /// @return slashed what was actually taken.
    function slash(
        address host,
        uint256 amount
    ) external nonReentrant onlyMarketplace returns (uint256 slashed) {
        Node storage node = _nodes[host];
        if (!node.active) revert NotRegistered(host);
        uint256 stake = node.stake;
        slashed = amount < stake ? amount : stake;
        node.stake = stake - slashed;
        emit Slashed(host, slashed, stake - slashed, msg.sender);
        if (slashed != 0) {
            (bool ok, ) = payable(msg.sender).call{value: slashed}("");
            if (!ok) revert StakeTransferFailed(msg.sender, slashed);
        }
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
            bool active,
            address priceToken
        )
    {
        Node storage node = _nodes[host];
        return (node.stake, node.payout, node.metadata, node.models, node.active, node.priceToken);
    }

    /// @notice The token `host`'s prices are in (address(0) = ETH, also for a host that is not
    ///         registered: check isRegistered).
    function priceTokenOf(address host) external view returns (address) {
        return _nodes[host].priceToken;
    }

    /// @notice Price per million tokens in base units of the host's price token; 0 means the
    ///         host does not serve it.
    function priceOf(address host, bytes32 modelId) external view returns (uint256) {
        return _pricePerMillion[host][modelId];
    }

    function stakeOf(address host) external view returns (uint256) {
        return _nodes[host].stake;
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
