"""Receipts, blobs and Merkle roots (DESIGN §6): signed commitments with a challenge window.

These are not zero-knowledge proofs. A host signs what it ran (model, runtime, prompt,
output, token counts) and chains the receipts; the Merkle root goes on-chain with the
result, and a verifier re-executes the job within the dispute window to challenge a lie.
"""

from fabstir_tui.engine.proofs.blobs import BlobCorrupted, BlobError, BlobStore, BlobStoreFull
from fabstir_tui.engine.proofs.merkle import merkle_proof, merkle_root, verify_merkle_proof
from fabstir_tui.engine.proofs.receipt import (
    ZERO_HASH,
    Receipt,
    ReceiptError,
    SignedReceipt,
    build_receipt,
    output_hash,
    parse_receipt,
    receipt_hash,
    runtime_hash,
    sign_receipt,
    verify_receipt,
)

__all__ = [
    "ZERO_HASH",
    "BlobCorrupted",
    "BlobError",
    "BlobStore",
    "BlobStoreFull",
    "Receipt",
    "ReceiptError",
    "SignedReceipt",
    "build_receipt",
    "merkle_proof",
    "merkle_root",
    "output_hash",
    "parse_receipt",
    "receipt_hash",
    "runtime_hash",
    "sign_receipt",
    "verify_merkle_proof",
    "verify_receipt",
]
