//! The replica's keys and the senders' signatures.
//!
//! * The subnet's threshold key is here one BLS12-381 key (min-sig: G2
//!   public key, G1 signatures, the IC's hash-to-curve domain), through
//!   `blst`. Its DER form is the root key `/api/v2/status` publishes and
//!   agents verify every certificate with.
//! * One node signs query responses with Ed25519; its key is in the state
//!   tree under `/subnet/<id>/node/<node id>/public_key`.
//! * Senders sign with Ed25519, ECDSA secp256k1 or ECDSA P-256 keys (what
//!   dfx, icp-cli and Internet Identity sessions hold), optionally through a
//!   chain of delegations.

use candid::Principal;
use sha2::{Digest, Sha224};

/// DER prefix of an IC BLS12-381 public key (algorithm OID
/// 1.3.6.1.4.1.44668.5.3.1.2.1, curve 1.3.6.1.4.1.44668.5.3.2.1).
const BLS_DER_PREFIX: [u8; 37] = [
    0x30, 0x81, 0x82, 0x30, 0x1d, 0x06, 0x0d, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xdc, 0x7c, 0x05, 0x03, 0x01, 0x02,
    0x01, 0x06, 0x0c, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xdc, 0x7c, 0x05, 0x03, 0x02, 0x01, 0x03, 0x61, 0x00,
];
/// DER prefix of an Ed25519 public key (OID 1.3.101.112).
pub const ED25519_DER_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// The IC's domain for BLS signatures on state roots.
const BLS_DST: &[u8] = b"BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_NUL_";

pub const REQUEST_DOMAIN: &[u8] = b"\x0Aic-request";
pub const DELEGATION_DOMAIN: &[u8] = b"\x1Aic-request-auth-delegation";
pub const STATE_ROOT_DOMAIN: &[u8] = b"\x0Dic-state-root";
pub const RESPONSE_DOMAIN: &[u8] = b"\x0Bic-response";

/// A principal derived from a DER public key (spec: "self-authenticating").
pub fn self_authenticating(der: &[u8]) -> Principal {
    let mut bytes = Sha224::digest(der).to_vec();
    bytes.push(0x02);
    Principal::from_slice(&bytes)
}

/// Secret material from the kernel's generator.
pub fn random_seed() -> [u8; 32] {
    use std::io::Read;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .expect("/dev/urandom is readable");
    seed
}

/// The subnet's certification key and its one node's query-signing key.
pub struct ReplicaKeys {
    bls: blst::min_sig::SecretKey,
    root_key_der: Vec<u8>,
    node: ed25519_dalek::SigningKey,
    node_key_der: Vec<u8>,
}

impl ReplicaKeys {
    /// Keys derived from 32 seed bytes (same seed, same keys: a replica
    /// restarted on its state keeps its root key).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let bls = blst::min_sig::SecretKey::key_gen(&seed, b"local-ic subnet key").expect("32 bytes of key material");
        let mut root_key_der = BLS_DER_PREFIX.to_vec();
        root_key_der.extend_from_slice(&bls.sk_to_pk().compress());
        let node_seed: [u8; 32] = sha2::Sha256::digest([&seed[..], b"node"].concat()).into();
        let node = ed25519_dalek::SigningKey::from_bytes(&node_seed);
        let mut node_key_der = ED25519_DER_PREFIX.to_vec();
        node_key_der.extend_from_slice(node.verifying_key().as_bytes());
        Self {
            bls,
            root_key_der,
            node,
            node_key_der,
        }
    }

    /// The DER root key agents fetch from `/api/v2/status`.
    pub fn root_key_der(&self) -> &[u8] {
        &self.root_key_der
    }

    /// The subnet's id: without delegations, agents take the root subnet's
    /// id to be the root key's self-authenticating principal.
    pub fn subnet_id(&self) -> Principal {
        self_authenticating(&self.root_key_der)
    }

    pub fn node_id(&self) -> Principal {
        self_authenticating(&self.node_key_der)
    }

    pub fn node_key_der(&self) -> &[u8] {
        &self.node_key_der
    }

    /// The certificate signature over a tree's root hash.
    pub fn sign_state_root(&self, root_hash: &[u8; 32]) -> Vec<u8> {
        let msg = [STATE_ROOT_DOMAIN, &root_hash[..]].concat();
        self.bls.sign(&msg, BLS_DST, &[]).compress().to_vec()
    }

    /// The node's signature of a query response's hash.
    pub fn sign_response(&self, response_hash: &[u8; 32]) -> Vec<u8> {
        use ed25519_dalek::Signer;
        let msg = [RESPONSE_DOMAIN, &response_hash[..]].concat();
        self.node.sign(&msg).to_bytes().to_vec()
    }
}

/// Why a signature did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("unsupported public key (expected a DER Ed25519, ECDSA secp256k1 or ECDSA P-256 key)")]
    UnsupportedKey,
    #[error("malformed public key: {0}")]
    MalformedKey(String),
    #[error("malformed signature")]
    MalformedSignature,
    #[error("the signature does not verify")]
    Invalid,
}

/// Verifies `signature` of `message` under the DER public key `der`.
pub fn verify(der: &[u8], message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
    if let Some(raw) = der.strip_prefix(&ED25519_DER_PREFIX[..]) {
        use ed25519_dalek::Verifier;
        let raw: [u8; 32] = raw
            .try_into()
            .map_err(|_| SignatureError::MalformedKey("ed25519 length".into()))?;
        let key =
            ed25519_dalek::VerifyingKey::from_bytes(&raw).map_err(|e| SignatureError::MalformedKey(e.to_string()))?;
        let sig = ed25519_dalek::Signature::from_slice(signature).map_err(|_| SignatureError::MalformedSignature)?;
        return key.verify(message, &sig).map_err(|_| SignatureError::Invalid);
    }
    use k256::ecdsa::signature::Verifier;
    use k256::pkcs8::DecodePublicKey;
    // ECDSA over SHA-256 of the message; the DER names the curve.
    if let Ok(key) = k256::ecdsa::VerifyingKey::from_public_key_der(der) {
        let sig = k256::ecdsa::Signature::from_slice(signature).map_err(|_| SignatureError::MalformedSignature)?;
        return key.verify(message, &sig).map_err(|_| SignatureError::Invalid);
    }
    if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_der(der) {
        let sig = p256::ecdsa::Signature::from_slice(signature).map_err(|_| SignatureError::MalformedSignature)?;
        return key.verify(message, &sig).map_err(|_| SignatureError::Invalid);
    }
    Err(SignatureError::UnsupportedKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_signature_verifies_under_the_published_root_key_only() {
        let keys = ReplicaKeys::from_seed([7; 32]);
        let root = [3u8; 32];
        let sig = keys.sign_state_root(&root);
        let pk = blst::min_sig::PublicKey::from_bytes(&keys.root_key_der()[37..]).unwrap();
        let sig = blst::min_sig::Signature::from_bytes(&sig).unwrap();
        let msg = [STATE_ROOT_DOMAIN, &root[..]].concat();
        assert_eq!(
            sig.verify(true, &msg, BLS_DST, &[], &pk, true),
            blst::BLST_ERROR::BLST_SUCCESS
        );
        let other = [STATE_ROOT_DOMAIN, &[4u8; 32][..]].concat();
        assert_ne!(
            sig.verify(true, &other, BLS_DST, &[], &pk, true),
            blst::BLST_ERROR::BLST_SUCCESS
        );
    }

    #[test]
    fn sender_signatures_of_both_key_types_verify_and_a_changed_message_does_not() {
        use ed25519_dalek::Signer as _;
        let ed = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let der = [&ED25519_DER_PREFIX[..], ed.verifying_key().as_bytes()].concat();
        let sig = ed.sign(b"msg").to_bytes();
        assert_eq!(verify(&der, b"msg", &sig), Ok(()));
        assert_eq!(verify(&der, b"msG", &sig), Err(SignatureError::Invalid));

        // SubjectPublicKeyInfo of an uncompressed secp256k1 point, as
        // ic-agent's Secp256k1Identity sends it.
        const SECP256K1_DER_PREFIX: [u8; 23] = [
            0x30, 0x56, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04,
            0x00, 0x0a, 0x03, 0x42, 0x00,
        ];
        let k = k256::ecdsa::SigningKey::from_slice(&[5; 32]).unwrap();
        let point = k.verifying_key().to_encoded_point(false);
        let der = [&SECP256K1_DER_PREFIX[..], point.as_bytes()].concat();
        let sig: k256::ecdsa::Signature = k.sign(b"msg");
        assert_eq!(verify(&der, b"msg", &sig.to_bytes()), Ok(()));
        assert_eq!(verify(&der, b"msG", &sig.to_bytes()), Err(SignatureError::Invalid));
        assert_eq!(
            verify(b"\x30\x00", b"msg", &[0; 64]),
            Err(SignatureError::UnsupportedKey)
        );
    }
}
