//! `GET /v1/handshake`: lets the CLI check that it talks to the flick of its
//! data dir before it sends that data dir's admin key.
//!
//! `flick up` writes a fresh random secret beside `flick.addr`, readable by
//! the data dir's owner only. The CLI sends a nonce and the socket address it
//! connected to; the server answers `HMAC-SHA256(secret, message)` — but only
//! for an address it listens on, so a listener elsewhere cannot relay a CLI's
//! handshake to the real server and pass the answer off as its own. The
//! endpoint needs no key and reveals nothing but the proof: the secret
//! itself never crosses the wire.

use std::net::SocketAddr;

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::routing::get;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde::Deserialize;

use crate::ApiError;

type HmacSha256 = Hmac<sha2::Sha256>;

/// The path of the handshake endpoint.
pub const PATH: &str = "/v1/handshake";

/// The per-run secret shared by `flick up` and the CLI through the data dir.
#[derive(Clone)]
pub struct HandshakeSecret([u8; 32]);

impl std::fmt::Debug for HandshakeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandshakeSecret(…)")
    }
}

impl HandshakeSecret {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses the file form (64 hex digits, surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).ok()?;
        Some(Self(bytes))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn mac(&self, nonce: &str, addr: SocketAddr) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        // Domain-separated and unambiguous: the nonce is hex, the address has no newline.
        mac.update(format!("flick-handshake-v1\n{nonce}\n{addr}").as_bytes());
        mac
    }

    /// The answer to a handshake: hex of the HMAC over `nonce` and `addr`.
    pub fn prove(&self, nonce: &str, addr: SocketAddr) -> String {
        hex::encode(self.mac(nonce, addr).finalize().into_bytes())
    }

    /// Does `proof` (hex) answer `nonce` for `addr`? Compared in constant time.
    pub fn verify(&self, nonce: &str, addr: SocketAddr, proof: &str) -> bool {
        let Ok(bytes) = hex::decode(proof) else { return false };
        self.mac(nonce, addr).verify_slice(&bytes).is_ok()
    }
}

/// Is `nonce` acceptable: 32 to 128 hex digits (16 to 64 random bytes)?
pub fn valid_nonce(nonce: &str) -> bool {
    (32..=128).contains(&nonce.len()) && nonce.bytes().all(|b| b.is_ascii_hexdigit())
}

#[derive(Deserialize)]
struct HandshakeParams {
    nonce: String,
    addr: String,
}

/// The handshake endpoint for a server listening on `listen`; merged into
/// [`crate::router`]'s router by the binary.
pub fn router(secret: HandshakeSecret, listen: SocketAddr) -> Router {
    Router::new().route(
        PATH,
        get(move |params: Result<Query<HandshakeParams>, QueryRejection>| async move {
            let Query(p) = params.map_err(|e| ApiError::BadRequest(format!("handshake: {e}")))?;
            if !valid_nonce(&p.nonce) {
                return Err(ApiError::BadRequest("handshake: nonce must be 32 to 128 hex digits".into()));
            }
            let addr: SocketAddr = p
                .addr
                .parse()
                .map_err(|_| ApiError::BadRequest("handshake: addr must be an IP:port socket address".into()))?;
            if !listens_on(listen, addr) {
                return Err(ApiError::BadRequest(format!("handshake: this server does not listen on {addr}")));
            }
            Ok(Json(serde_json::json!({ "proof": secret.prove(&p.nonce, addr) })))
        }),
    )
}

/// Would a connection to `addr` reach a server bound to `listen`?
fn listens_on(listen: SocketAddr, addr: SocketAddr) -> bool {
    addr.port() == listen.port() && (listen.ip().is_unspecified() || listen.ip() == addr.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn a_proof_verifies_only_for_its_nonce_address_and_secret() {
        let secret = HandshakeSecret::new([7; 32]);
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let proof = secret.prove(NONCE, addr);
        assert!(secret.verify(NONCE, addr, &proof));
        assert!(!secret.verify("00112233445566778899aabbccddeef0", addr, &proof));
        assert!(!secret.verify(NONCE, "127.0.0.1:4001".parse().unwrap(), &proof));
        assert!(!HandshakeSecret::new([8; 32]).verify(NONCE, addr, &proof));
        assert!(!secret.verify(NONCE, addr, &proof[..62]));
        assert!(!secret.verify(NONCE, addr, "not hex"));
    }

    #[test]
    fn the_secret_round_trips_through_its_file_form() {
        let secret = HandshakeSecret::new([0xab; 32]);
        let back = HandshakeSecret::from_hex(&format!("{}\n", secret.to_hex())).unwrap();
        assert_eq!(back.0, secret.0);
        assert!(HandshakeSecret::from_hex("abcd").is_none());
        assert!(HandshakeSecret::from_hex(&"zz".repeat(32)).is_none());
    }

    #[test]
    fn only_the_servers_own_address_is_answered() {
        let bound: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert!(listens_on(bound, bound));
        assert!(!listens_on(bound, "127.0.0.1:4001".parse().unwrap()));
        assert!(!listens_on(bound, "127.0.0.2:4000".parse().unwrap()));
        let any: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        assert!(listens_on(any, "127.0.0.1:4000".parse().unwrap()));
        assert!(!listens_on(any, "127.0.0.1:4001".parse().unwrap()));
    }

    #[test]
    fn nonces_are_hex_of_sane_length() {
        assert!(valid_nonce(NONCE));
        assert!(!valid_nonce("abc"));
        assert!(!valid_nonce(&"g".repeat(32)));
        assert!(!valid_nonce(&"a".repeat(129)));
    }
}
