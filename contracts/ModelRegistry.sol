// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title ModelRegistry
/// @notice Models hosts may serve: id = SHA-256 of the GGUF file's bytes, approved by the owner.
contract ModelRegistry {
    struct Model {
        string name;
        bool approved;
    }

    address public immutable owner;
    mapping(bytes32 => Model) private _models;

    event ModelApproved(bytes32 indexed modelId, string name);
    event ModelRevoked(bytes32 indexed modelId);

    error NotOwner(address caller);
    error ZeroModelId();
    error EmptyName();
    error ModelAlreadyApproved(bytes32 modelId);
    error ModelNotApproved(bytes32 modelId);

    constructor() {
        owner = msg.sender;
    }

    function approveModel(bytes32 modelId, string calldata name) external {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        if (modelId == bytes32(0)) revert ZeroModelId();
        if (bytes(name).length == 0) revert EmptyName();
        if (_models[modelId].approved) revert ModelAlreadyApproved(modelId);
        _models[modelId] = Model({name: name, approved: true});
        emit ModelApproved(modelId, name);
    }

    function revokeModel(bytes32 modelId) external {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        if (!_models[modelId].approved) revert ModelNotApproved(modelId);
        _models[modelId].approved = false;
        emit ModelRevoked(modelId);
    }

    function isApproved(bytes32 modelId) external view returns (bool) {
        return _models[modelId].approved;
    }

    /// @notice The name stays readable after a revocation, so old jobs still show it.
    function modelName(bytes32 modelId) external view returns (string memory) {
        return _models[modelId].name;
    }
}
