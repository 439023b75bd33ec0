"""Attested sessions: one quote per session, then an HMAC per result.

A hardware quote per request is slow (an SEV-SNP or TDX report goes through the platform
firmware; the client then checks a P-384 signature and a certificate chain) and does not amortize.
A session binds a key to the attested enclave once, as RA-TLS does for a channel:

    client                                   enclave (code+model measured)
    x25519 key (c, C), nonce n   --- C, n --->
                                             x25519 key (e, E), session id s
                                 <-- E, s, quote(n, measurement,
                                                 input = request(C),
                                                 output = offer(E, s)) ---
    verify_quote(...)  (pinned roots, allowed measurement, nonce once)
    K = HKDF-SHA384(X25519(c, E), salt = n, info = (measurement, C, E, s))   [same on both sides]

    per request, the client picks a sequence number q it never used in this session (the
    enclave runs each q once per session and refuses a replayed one):
    data, s, q                   --->
                                 <-- output, q, tag = HMAC-SHA384(K, (s, q, H(data), H(output)))
    check the tag against ITS OWN q and H(data)

An enclave whose sealed model came with an enrolment (`tee.enrolment`) opens sessions only for
the clients it enrols (certificate and signature checked at the opening; the offer's
"enrolled" flag, quoted, says so), then also requires a request MAC under K on every request,
HMAC-SHA384(K, (s, q, H(data))), and encrypts each output under a key derived from K
(AES-256-GCM, IV = q, AAD = (s, q, H(data))): the host can neither use the session nor read
what the enclave answered.

What this proves: the output came from the enclave whose quote the client verified when it
opened the session (only that enclave and the client know K), for this client's input, and is
not an answer to another request (the client's sequence number is in the tag). What it does
not: the platform's state after the opening (the client re-opens after `max_age_s`; a real
deployment would also re-attest when the platform's TCB changes). The session key lives in the
enclave's memory: on real SEV-SNP/TDX hardware its host cannot read it; with a SIMULATED enclave
the host can, so a simulated session proves nothing, like a simulated quote.

Digests: `tee.measurement.input_digest` and `result_digest`; every MAC and KDF input is
domain-separated and length-prefixed (`tee._encoding.encode`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tee._encoding import decode, encode
from tee.errors import BindingMismatch, MalformedEvidence, ReplayedNonce, UnknownSession
from tee.measurement import input_digest, result_digest
from tee.policy import NonceStore, Policy
from tee.quote import Quote
from tee.verifier import TrustAnchors, VerifiedQuote, verify_quote

__all__ = [
    "SESSION_ID_SIZE",
    "AttestedSession",
    "EnclaveSessions",
    "SessionKey",
    "SessionOffer",
    "SessionResult",
    "open_request",
    "parse_offer",
    "request_tag",
    "result_tag",
    "seal_output",
]

SESSION_ID_SIZE = 16
_KEY_SIZE = 32  # X25519 public keys
_MAC_KEY_SIZE = 48
_OFFER = b"secure-infer/tee/session-offer/v2"
_REQUEST = b"secure-infer/tee/session-request/v1"
_OUTPUT = b"secure-infer/tee/session-output/v1"


@dataclass(frozen=True, slots=True)
class SessionOffer:
    """What `Enclave.open_session` returns: the offer (enclave key, session id) and its quote."""

    offer: bytes
    quote: Quote


@dataclass(frozen=True, slots=True)
class SessionResult:
    """What `Enclave.run_in_session` returns: the output and its tag for request `seq`."""

    output: bytes
    tag: bytes
    seq: int


def open_request(client_public: bytes) -> bytes:
    """The input an enclave quotes when it opens a session for `client_public`."""
    return encode(b"secure-infer/tee/session-open/v1", client_public)


def _offer(enclave_public: bytes, session_id: bytes, enrolled: bool) -> bytes:
    return encode(_OFFER, enclave_public, session_id, b"\x01" if enrolled else b"\x00")


def parse_offer(offer: bytes) -> tuple[bytes, bytes, bool]:
    """(enclave public key, session id, enrolled) from the quoted offer; MalformedEvidence
    otherwise. `enrolled`: the enclave admitted this client by its sealed enrolment
    (`tee.enrolment`), and the session authenticates requests and encrypts outputs."""
    try:
        domain, enclave_public, session_id, flag = decode(offer, 4)
    except ValueError as exc:
        raise MalformedEvidence(f"not a session offer: {exc}") from None
    if (
        domain != _OFFER
        or len(enclave_public) != _KEY_SIZE
        or len(session_id) != SESSION_ID_SIZE
        or flag not in (b"\x00", b"\x01")
    ):
        raise MalformedEvidence("not a session offer")
    return enclave_public, session_id, flag == b"\x01"


def _session_key(
    shared: bytes,
    nonce: bytes,
    measurement: bytes,
    client_public: bytes,
    enclave_public: bytes,
    session_id: bytes,
) -> bytes:
    info = encode(
        b"secure-infer/tee/session-key/v1", measurement, client_public, enclave_public, session_id
    )
    return HKDF(hashes.SHA384(), _MAC_KEY_SIZE, salt=nonce, info=info).derive(shared)


def result_tag(
    key: bytes,
    session_id: bytes,
    seq: int,
    data: bytes,
    output: bytes,
    *,
    digest: bytes | None = None,
) -> bytes:
    """HMAC-SHA384 binding one request (`seq`, the input) to its output within a session.
    `digest`: `input_digest(data)` if the caller has it (hashing a large input costs ~ms)."""
    message = encode(
        b"secure-infer/tee/session-result/v1",
        session_id,
        seq.to_bytes(8, "big"),
        input_digest(data) if digest is None else digest,
        result_digest(output),
    )
    return hmac.new(key, message, hashlib.sha384).digest()


def request_tag(
    key: bytes, session_id: bytes, seq: int, data: bytes, *, digest: bytes | None = None
) -> bytes:
    """HMAC-SHA384 by which a client authenticates request `seq` (its input) in a session."""
    d = input_digest(data) if digest is None else digest
    message = encode(_REQUEST, session_id, seq.to_bytes(8, "big"), d)
    return hmac.new(key, message, hashlib.sha384).digest()


@functools.lru_cache(maxsize=1024)  # one per session (as many as EnclaveSessions holds)
def _output_aead(key: bytes) -> AESGCM:
    return AESGCM(HKDF(hashes.SHA256(), 32, salt=None, info=_OUTPUT).derive(key))


def _output_cipher(
    key: bytes, session_id: bytes, seq: int, digest: bytes
) -> tuple[AESGCM, bytes, bytes]:
    aad = encode(_OUTPUT, session_id, seq.to_bytes(8, "big"), digest)
    return _output_aead(key), seq.to_bytes(12, "big"), aad  # one seq per request


def seal_output(
    key: bytes,
    session_id: bytes,
    seq: int,
    data: bytes,
    output: bytes,
    *,
    digest: bytes | None = None,
) -> bytes:
    """An enrolled session's output, encrypted so that only its client reads it."""
    d = input_digest(data) if digest is None else digest
    aead, iv, aad = _output_cipher(key, session_id, seq, d)
    return aead.encrypt(iv, output, aad)


class SessionKey:
    """The client's ephemeral X25519 key for opening one session."""

    def __init__(self) -> None:
        self._private = X25519PrivateKey.generate()
        self.public = self._private.public_key().public_bytes_raw()

    def exchange(self, enclave_public: bytes) -> bytes:
        return self._private.exchange(X25519PublicKey.from_public_bytes(enclave_public))


@dataclass(eq=False)
class AttestedSession:
    """The client's side of an open session (after the opening quote verified).

    `next_seq()` gives each request its own sequence number; `check()` accepts an output only
    with a tag over that number and the client's own input.
    """

    session_id: bytes
    quote: VerifiedQuote  # the opening quote, verified (kept for the result's summary)
    opened_at: float  # time.monotonic() at opening
    _key: bytes = field(repr=False)
    # the enclave admitted this client by its sealed enrolment (quoted in the offer): requests
    # carry `request_tag`, outputs arrive encrypted and `check` decrypts them
    enrolled: bool = False
    _seq: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(
        cls,
        quote: Quote,
        *,
        offer: bytes,
        key: SessionKey,
        nonce: bytes,
        policy: Policy,
        trust: TrustAnchors,
        nonce_store: NonceStore,
    ) -> AttestedSession:
        """Verify the opening quote (`tee.verify_quote`: raises on any failure); derive the key."""
        verified = verify_quote(
            quote,
            input=open_request(key.public),
            output=offer,
            nonce=nonce,
            policy=policy,
            trust=trust,
            nonce_store=nonce_store,
        )
        enclave_public, session_id, enrolled = parse_offer(offer)
        shared = key.exchange(enclave_public)
        mac_key = _session_key(
            shared, nonce, quote.measurement, key.public, enclave_public, session_id
        )
        return cls(session_id, verified, time.monotonic(), mac_key, enrolled=enrolled)

    def age_s(self) -> float:
        return time.monotonic() - self.opened_at

    def next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def request_tag(self, seq: int, data: bytes, *, digest: bytes | None = None) -> bytes:
        """The MAC that authenticates request `seq` on input `data` to the enclave."""
        return request_tag(self._key, self.session_id, seq, data, digest=digest)

    def check(
        self,
        *,
        seq: int,
        answered_seq: int,
        data: bytes,
        output: bytes,
        tag: bytes,
        digest: bytes | None = None,
    ) -> bytes:
        """Accept `output` for request `seq` on input `data` and return it (decrypted in an
        enrolled session), or raise.

        `answered_seq` is the sequence number the reply claims (unauthenticated: it only names
        a replay); the tag is checked against the client's own `seq`."""
        if answered_seq != seq:
            raise ReplayedNonce(
                f"the verifier answered request {answered_seq} of this session to request {seq}"
            )
        d = input_digest(data) if digest is None else digest
        expected = result_tag(self._key, self.session_id, seq, data, output, digest=d)
        if not hmac.compare_digest(expected, tag):
            raise BindingMismatch(
                "the session tag does not verify: the output was altered, or computed on "
                "another input, or by something other than the attested enclave"
            )
        if not self.enrolled:
            return output
        aead, iv, aad = _output_cipher(self._key, self.session_id, seq, d)
        try:
            return bytes(aead.decrypt(iv, output, aad))
        except InvalidTag:
            raise BindingMismatch("the session's encrypted output does not open") from None


REPLAY_WINDOW = 1024  # sequence numbers an enclave remembers below the highest it served


class _ReplayWindow:
    """The sequence numbers one session has used: the highest, and a bitmap of the
    `REPLAY_WINDOW` below it (bit i: highest - i used), as IPsec's anti-replay window does.
    Numbers further below are refused: a client numbers its requests in order, so only a
    request delayed behind ~1,000 later ones of the same session would be."""

    __slots__ = ("bits", "high")

    def __init__(self) -> None:
        self.high = 0
        self.bits = 0

    def claim(self, seq: int) -> None:
        if seq > self.high:
            self.bits = ((self.bits << (seq - self.high)) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self.high = seq
            return
        offset = self.high - seq
        if offset >= REPLAY_WINDOW:
            raise ReplayedNonce(
                f"sequence number {seq} is more than {REPLAY_WINDOW} below this session's "
                f"highest ({self.high}): refused as a possible replay"
            )
        if self.bits >> offset & 1:
            raise ReplayedNonce(f"sequence number {seq} was already used in this session")
        self.bits |= 1 << offset


class EnclaveSessions:
    """The enclave's side: opens sessions and tags outputs. Lives inside the enclave process.

    Holds at most `capacity` sessions (the oldest is dropped first; its client re-opens). Each
    sequence number runs once per session (`claim`): a request the host replays is refused, so
    an answer is never computed twice under the same number (an enrolled session's output IV is
    the sequence number: a replay would reuse it)."""

    def __init__(self, capacity: int = 1024) -> None:
        self._sessions: OrderedDict[bytes, tuple[bytes, _ReplayWindow]] = OrderedDict()
        self._capacity = capacity

    def open(
        self, client_public: bytes, nonce: bytes, measurement: bytes, *, enrolled: bool = False
    ) -> tuple[bytes, bytes]:
        """(the quoted input, the quoted offer) for a new session with `client_public`;
        `enrolled`: the caller checked the client's identity against its enrolment."""
        if len(client_public) != _KEY_SIZE:
            raise ValueError(f"client key must be {_KEY_SIZE} bytes (X25519)")
        private = X25519PrivateKey.generate()
        enclave_public = private.public_key().public_bytes_raw()
        session_id = secrets.token_bytes(SESSION_ID_SIZE)
        shared = private.exchange(X25519PublicKey.from_public_bytes(client_public))
        key = _session_key(shared, nonce, measurement, client_public, enclave_public, session_id)
        self._sessions[session_id] = (key, _ReplayWindow())
        while len(self._sessions) > self._capacity:
            self._sessions.popitem(last=False)
        return open_request(client_public), _offer(enclave_public, session_id, enrolled)

    def key(self, session_id: bytes) -> bytes:
        """The session's MAC key; `UnknownSession` if dropped or never opened."""
        entry = self._sessions.get(session_id)
        if entry is None:
            raise UnknownSession("unknown or expired session; open a new one")
        self._sessions.move_to_end(session_id)
        return entry[0]

    def claim(self, session_id: bytes, seq: int) -> None:
        """Mark `seq` used in the session; `ReplayedNonce` if it was, or is too old to tell."""
        entry = self._sessions.get(session_id)
        if entry is None:
            raise UnknownSession("unknown or expired session; open a new one")
        entry[1].claim(seq)
