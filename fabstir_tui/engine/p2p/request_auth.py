"""Request authentication (DESIGN §11.6): the client's EIP-712 signed `JobRequest`.

One scheme for P2P and HTTP. The signed struct is
``JobRequest(uint256 jobId, uint256 sessionId, address host, bytes32 promptHash,
uint256 nonce, uint256 expiry)`` in the domain ``{name: "Fabstir", version: "1", chainId,
verifyingContract: the JobMarketplace when configured}``. Exactly one of jobId/sessionId is
non-zero (the contract numbers both from 1, so 0 means "not this kind").

``promptHash`` is keccak256 of the prompt's UTF-8 bytes: the same hash a contract computes
with ``keccak256(bytes(prompt))``, so the prompt a host was given can be checked on-chain
against the hash the client posted with the job.

The wire form (the ``auth`` object of a ``job_request`` frame; the HTTP header carries the
same JSON, base64url-encoded) holds the fields, the claimed ``signer`` and the 65-byte
``signature`` as hex. uint256 values travel as decimal strings (JSON numbers lose precision
in most clients); ``expiry`` is unix seconds.

`RequestVerifier.verify` returns the recovered signer or raises `AuthRefused` naming why.
The chain check (the signer posted the job or opened the session) belongs to the job
pipeline: pass ``expected_signer`` once it exists; until then the job protocol serves only
allowlisted peers. Used nonces live in SQLite (table ``request_nonces``, store migration m4).
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from fabstir_tui.config import Config
    from fabstir_tui.engine.store import Store

DOMAIN_NAME: Final = "Fabstir"
DOMAIN_VERSION: Final = "1"
MAX_EXPIRY_AHEAD_S: Final = 600
UINT256_MAX: Final = 2**256 - 1
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_HEX32 = re.compile(r"0x[0-9a-fA-F]{64}")
_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,77}")

JOB_REQUEST_TYPE: Final = (
    {"name": "jobId", "type": "uint256"},
    {"name": "sessionId", "type": "uint256"},
    {"name": "host", "type": "address"},
    {"name": "promptHash", "type": "bytes32"},
    {"name": "nonce", "type": "uint256"},
    {"name": "expiry", "type": "uint256"},
)


class AuthReason:
    """Why a signed request was refused: short codes a log or a test can match."""

    MALFORMED: Final = "malformed"
    BAD_SIGNATURE: Final = "bad_signature"
    EXPIRED: Final = "expired"
    EXPIRY_TOO_FAR: Final = "expiry_too_far"
    WRONG_HOST: Final = "wrong_host"
    WRONG_REQUEST: Final = "wrong_request"
    PROMPT_MISMATCH: Final = "prompt_mismatch"
    NONCE_REUSED: Final = "nonce_reused"
    WRONG_SIGNER: Final = "wrong_signer"


class AuthRefused(Exception):
    """A signed request the node will not honour; `reason` is an `AuthReason` code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AuthDomain:
    """The EIP-712 domain: a signature for one chain/contract is useless on another."""

    chain_id: int
    verifying_contract: str = ""

    @classmethod
    def from_config(cls, config: Config) -> AuthDomain:
        """Chain id and JobMarketplace address from the node's config."""
        return cls(config.chain.chain_id, config.chain.job_marketplace)

    def as_eip712(self) -> tuple[list[dict[str, str]], dict[str, Any]]:
        """(the EIP712Domain type, the domain values), leaving out an unset contract."""
        fields = [
            {"name": "name", "type": "string"},
            {"name": "version", "type": "string"},
            {"name": "chainId", "type": "uint256"},
        ]
        values: dict[str, Any] = {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": self.chain_id,
        }
        if self.verifying_contract:
            fields.append({"name": "verifyingContract", "type": "address"})
            values["verifyingContract"] = self.verifying_contract
        return fields, values

    def typed_data(
        self, primary_type: str, fields: Sequence[dict[str, str]], message: dict[str, Any]
    ) -> Any:
        """The signable EIP-712 message of one struct in this domain (requests and receipts)."""
        from eth_account.messages import encode_typed_data

        domain_type, domain_values = self.as_eip712()
        return encode_typed_data(
            full_message={
                "types": {"EIP712Domain": domain_type, primary_type: list(fields)},
                "primaryType": primary_type,
                "domain": domain_values,
                "message": message,
            }
        )


def prompt_hash(prompt: str) -> str:
    """keccak256 of the prompt's UTF-8 bytes, 0x-hex (what a contract computes on-chain)."""
    from eth_utils.crypto import keccak

    return "0x" + keccak(prompt.encode("utf-8")).hex()


@dataclass(frozen=True, slots=True)
class SignedJobRequest:
    """The signed struct, the address that claims to have signed it, and the signature."""

    job_id: int
    session_id: int
    host: str
    prompt_hash: str
    nonce: int
    expiry: int
    signer: str
    signature: str

    def message(self) -> dict[str, Any]:
        """The struct's values as EIP-712 encodes them."""
        return {
            "jobId": self.job_id,
            "sessionId": self.session_id,
            "host": self.host,
            "promptHash": bytes.fromhex(self.prompt_hash[2:]),
            "nonce": self.nonce,
            "expiry": self.expiry,
        }

    def to_wire(self) -> dict[str, Any]:
        """The JSON object sent as ``auth`` (uint256 as decimal strings)."""
        return {
            "jobId": str(self.job_id),
            "sessionId": str(self.session_id),
            "host": self.host,
            "promptHash": self.prompt_hash,
            "nonce": str(self.nonce),
            "expiry": self.expiry,
            "signer": self.signer,
            "signature": self.signature,
        }


def _typed_data(domain: AuthDomain, message: dict[str, Any]) -> Any:
    return domain.typed_data("JobRequest", JOB_REQUEST_TYPE, message)


def sign_request(
    private_key: bytes | str,
    domain: AuthDomain,
    *,
    host: str,
    prompt: str,
    nonce: int,
    expiry: int,
    job_id: int = 0,
    session_id: int = 0,
) -> SignedJobRequest:
    """Sign a request the way a client (or a test) does; exactly one id must be non-zero."""
    from eth_account import Account

    if (job_id == 0) == (session_id == 0):
        raise ValueError("exactly one of job_id and session_id must be non-zero")
    account = Account.from_key(private_key)
    unsigned = SignedJobRequest(
        job_id, session_id, host, prompt_hash(prompt), nonce, expiry, account.address, ""
    )
    signed = account.sign_message(_typed_data(domain, unsigned.message()))
    signature = "0x" + bytes(signed.signature).hex()
    return SignedJobRequest(
        job_id, session_id, host, unsigned.prompt_hash, nonce, expiry, account.address, signature
    )


def _uint(d: dict[str, Any], name: str) -> int:
    value = d.get(name)
    if isinstance(value, str) and _DECIMAL.fullmatch(value):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise AuthRefused(AuthReason.MALFORMED, f"auth field {name!r}: expected a uint256")
    if not 0 <= number <= UINT256_MAX:
        raise AuthRefused(AuthReason.MALFORMED, f"auth field {name!r}: outside uint256")
    return number


def _matching(d: dict[str, Any], name: str, pattern: re.Pattern[str], what: str) -> str:
    value = d.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise AuthRefused(AuthReason.MALFORMED, f"auth field {name!r}: expected {what}")
    return value


def parse_auth(obj: Any) -> SignedJobRequest:
    """The wire ``auth`` object parsed, or AuthRefused(MALFORMED) naming the bad field."""
    if not isinstance(obj, dict):
        raise AuthRefused(AuthReason.MALFORMED, "auth must be a JSON object")
    job_id, session_id = _uint(obj, "jobId"), _uint(obj, "sessionId")
    if (job_id == 0) == (session_id == 0):
        raise AuthRefused(AuthReason.MALFORMED, "auth: exactly one of jobId/sessionId is non-zero")
    return SignedJobRequest(
        job_id=job_id,
        session_id=session_id,
        host=_matching(obj, "host", _ADDRESS, "a 0x 20-byte hex address"),
        prompt_hash=_matching(obj, "promptHash", _HEX32, "0x + 32 bytes of hex").lower(),
        nonce=_uint(obj, "nonce"),
        expiry=_uint(obj, "expiry"),
        signer=_matching(obj, "signer", _ADDRESS, "a 0x 20-byte hex address"),
        signature=_matching(obj, "signature", _SIGNATURE, "0x + 65 bytes of hex"),
    )


def authorization_header(signed: SignedJobRequest) -> str:
    """The HTTP form: ``Fabstir <base64url(JSON of the wire form)>`` (no padding)."""
    body = json.dumps(signed.to_wire(), separators=(",", ":")).encode("utf-8")
    return "Fabstir " + base64.urlsafe_b64encode(body).decode("ascii").rstrip("=")


def auth_from_header(value: str, *, max_chars: int = 4096) -> dict[str, Any]:
    """The wire-form object inside an ``Authorization: Fabstir ...`` header (for `verify`),
    or AuthRefused(MALFORMED)."""
    scheme, _, token = value.strip().partition(" ")
    if scheme != "Fabstir" or not token or len(token) > max_chars:
        raise AuthRefused(AuthReason.MALFORMED, "expected 'Authorization: Fabstir <base64url>'")
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AuthRefused(
            AuthReason.MALFORMED, f"the Fabstir token is not base64url JSON: {exc}"
        ) from None
    if not isinstance(decoded, dict):
        raise AuthRefused(AuthReason.MALFORMED, "the Fabstir token must hold a JSON object")
    return decoded


def _request_id(value: str | None) -> int:
    """A frame's job/session id as the uint256 the signature covers (0 when absent)."""
    if value is None:
        return 0
    if not _DECIMAL.fullmatch(value):
        raise AuthRefused(
            AuthReason.WRONG_REQUEST, f"id {value[:40]!r} is not a decimal uint256 as auth needs"
        )
    return int(value)


class NonceBook:
    """Used nonces per signer in SQLite, so a captured request cannot be replayed."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def use(self, signer: str, nonce: int, expiry: int) -> bool:
        """Record the nonce; False when this signer already used it."""
        try:
            with self._store.transaction() as db:
                db.execute(
                    "INSERT INTO request_nonces (signer, nonce, expiry) VALUES (?, ?, ?)",
                    (signer.lower(), str(nonce), min(expiry, 2**62)),
                )
        except sqlite3.IntegrityError:
            return False
        return True

    def sweep(self, now: float | None = None) -> int:
        """Forget nonces whose requests have expired (they are refused as expired anyway)."""
        cutoff = int(time.time() if now is None else now)
        with self._store.transaction() as db:
            return db.execute("DELETE FROM request_nonces WHERE expiry < ?", (cutoff,)).rowcount


ExpectedSigner = Callable[[SignedJobRequest], str | None]


class RequestVerifier:
    """Checks signed requests for one node: its domain, its host address, its nonce book.

    `expected_signer`, when given, returns the address that must have signed (the job's
    poster or the session's client, from the chain); None from it means "unknown": refused.
    """

    def __init__(
        self,
        domain: AuthDomain,
        nonces: NonceBook,
        *,
        expected_signer: ExpectedSigner | None = None,
        max_ahead_s: int = MAX_EXPIRY_AHEAD_S,
    ) -> None:
        self.domain = domain
        self.nonces = nonces
        self.expected_signer = expected_signer
        self.max_ahead_s = max_ahead_s

    def verify(
        self,
        auth: Any,
        *,
        host_address: str,
        prompt: str,
        job_id: str | None,
        session_id: str | None,
        now: float | None = None,
        expected_signer: ExpectedSigner | None = None,
    ) -> str:
        """The checksummed signer of a valid, fresh, unused request, or AuthRefused.

        Cheap checks first; the nonce is spent only when everything else passed, so a
        refused request never burns a nonce. `expected_signer` overrides the verifier's own
        for this call (the pipeline knows each job's poster).
        """
        request = parse_auth(auth)
        if (request.job_id, request.session_id) != (_request_id(job_id), _request_id(session_id)):
            raise AuthRefused(
                AuthReason.WRONG_REQUEST, "auth was signed for another job or session id"
            )
        if request.prompt_hash != prompt_hash(prompt):
            raise AuthRefused(
                AuthReason.PROMPT_MISMATCH, "the prompt does not match the signed promptHash"
            )
        if not host_address:
            raise AuthRefused(
                AuthReason.WRONG_HOST, "this node has no chain key, so it cannot be the host"
            )
        if request.host.lower() != host_address.lower():
            raise AuthRefused(
                AuthReason.WRONG_HOST,
                f"auth names host {request.host}, but this node is {host_address}",
            )
        moment = int(time.time() if now is None else now)
        if request.expiry < moment:
            raise AuthRefused(AuthReason.EXPIRED, f"auth expired {moment - request.expiry} s ago")
        if request.expiry - moment > self.max_ahead_s:
            raise AuthRefused(
                AuthReason.EXPIRY_TOO_FAR,
                f"auth expiry is {request.expiry - moment} s ahead; at most {self.max_ahead_s} s",
            )
        signer = self._recover(request)
        expected_of = expected_signer or self.expected_signer
        if expected_of is not None:
            expected = expected_of(request)
            if expected is None or expected.lower() != signer.lower():
                raise AuthRefused(
                    AuthReason.WRONG_SIGNER,
                    f"{signer} did not post this job or open this session",
                )
        if not self.nonces.use(signer, request.nonce, request.expiry):
            raise AuthRefused(AuthReason.NONCE_REUSED, f"nonce {request.nonce} was already used")
        return signer

    def _recover(self, request: SignedJobRequest) -> str:
        from eth_account import Account

        try:
            recovered: str = Account.recover_message(
                _typed_data(self.domain, request.message()),
                signature=bytes.fromhex(request.signature[2:]),
            )
        except Exception as exc:  # eth_keys raises several types for a junk signature
            raise AuthRefused(AuthReason.BAD_SIGNATURE, f"unreadable signature: {exc}") from None
        if recovered.lower() != request.signer.lower():
            raise AuthRefused(
                AuthReason.BAD_SIGNATURE,
                f"the signature is not {request.signer}'s over this request and domain",
            )
        return recovered
