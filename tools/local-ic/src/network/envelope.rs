//! Authenticated request envelopes (interface spec, "Authentication"):
//! CBOR `{content, sender_pubkey?, sender_sig?, sender_delegation?}`, the
//! request id over `content`, the sender's signature through its
//! delegations, and the ingress expiry window.

use super::keys::{self, self_authenticating};
use super::request_id::hash_map;
use candid::Principal;
use ciborium::Value;

/// How far ahead of the replica's clock an expiry may be: the IC's
/// 5-minute ingress TTL plus its permitted drift of 60 s.
pub const MAX_EXPIRY_AHEAD_NANOS: u64 = (5 * 60 + 60) * 1_000_000_000;
/// Most delegations a chain may hold (the spec's limit).
const MAX_DELEGATIONS: usize = 20;

/// A request the replica refuses before executing anything, with the HTTP
/// status it answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

fn bad(message: impl Into<String>) -> Refusal {
    Refusal {
        status: 400,
        message: message.into(),
    }
}

#[derive(Debug, Clone)]
pub enum Request {
    Call {
        canister_id: Principal,
        method_name: String,
        arg: Vec<u8>,
    },
    Query {
        canister_id: Principal,
        method_name: String,
        arg: Vec<u8>,
    },
    ReadState {
        paths: Vec<Vec<Vec<u8>>>,
    },
}

#[derive(Debug, Clone)]
pub struct Envelope {
    pub request_id: [u8; 32],
    pub sender: Principal,
    pub ingress_expiry: u64,
    pub request: Request,
}

fn field<'a>(map: &'a [(Value, Value)], name: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| matches!(k, Value::Text(t) if t == name))
        .map(|(_, v)| v)
}

fn untag(v: &Value) -> &Value {
    match v {
        Value::Tag(_, inner) => untag(inner),
        other => other,
    }
}

fn as_map<'a>(v: &'a Value, what: &str) -> Result<&'a [(Value, Value)], Refusal> {
    match untag(v) {
        Value::Map(m) => Ok(m),
        _ => Err(bad(format!("Could not parse body as {what}: expected a map"))),
    }
}

fn bytes<'a>(map: &'a [(Value, Value)], name: &str) -> Result<&'a [u8], Refusal> {
    match field(map, name).map(untag) {
        Some(Value::Bytes(b)) => Ok(b),
        Some(_) => Err(bad(format!("Could not parse body: field `{name}` is not a blob"))),
        None => Err(bad(format!("Could not parse body: missing field `{name}`"))),
    }
}

fn nat(map: &[(Value, Value)], name: &str) -> Result<u64, Refusal> {
    match field(map, name).map(untag) {
        Some(Value::Integer(i)) => {
            u64::try_from(*i).map_err(|_| bad(format!("Could not parse body: field `{name}` is out of range")))
        }
        Some(_) => Err(bad(format!("Could not parse body: field `{name}` is not a natural"))),
        None => Err(bad(format!("Could not parse body: missing field `{name}`"))),
    }
}

fn text(map: &[(Value, Value)], name: &str) -> Result<String, Refusal> {
    match field(map, name).map(untag) {
        Some(Value::Text(t)) => Ok(t.clone()),
        Some(_) => Err(bad(format!("Could not parse body: field `{name}` is not text"))),
        None => Err(bad(format!("Could not parse body: missing field `{name}`"))),
    }
}

fn principal(map: &[(Value, Value)], name: &str) -> Result<Principal, Refusal> {
    Principal::try_from_slice(bytes(map, name)?).map_err(|e| bad(format!("Could not parse body: `{name}`: {e}")))
}

/// Decodes and authenticates an envelope at replica time `now` (nanos).
pub fn authenticate(body: &[u8], now: u64) -> Result<Envelope, Refusal> {
    let value: Value =
        ciborium::from_reader(body).map_err(|e| bad(format!("Could not parse body as read request: {e}")))?;
    let envelope = as_map(&value, "an envelope")?;
    let content = as_map(
        field(envelope, "content").ok_or_else(|| bad("Could not parse body: missing field `content`"))?,
        "content",
    )?;
    let request_id = hash_map(content).map_err(|e| bad(format!("Could not parse body: {e}")))?;
    let sender = principal(content, "sender")?;
    let ingress_expiry = nat(content, "ingress_expiry")?;
    let request = match text(content, "request_type")?.as_str() {
        kind @ ("call" | "query") => {
            let canister_id = principal(content, "canister_id")?;
            let method_name = text(content, "method_name")?;
            let arg = bytes(content, "arg")?.to_vec();
            if kind == "call" {
                Request::Call {
                    canister_id,
                    method_name,
                    arg,
                }
            } else {
                Request::Query {
                    canister_id,
                    method_name,
                    arg,
                }
            }
        }
        "read_state" => {
            let Some(Value::Array(paths)) = field(content, "paths").map(untag) else {
                return Err(bad("Could not parse body: `paths` must be an array"));
            };
            let mut parsed = Vec::with_capacity(paths.len());
            for path in paths {
                let Value::Array(labels) = untag(path) else {
                    return Err(bad("Could not parse body: a path must be an array of blobs"));
                };
                let mut p = Vec::with_capacity(labels.len());
                for label in labels {
                    match untag(label) {
                        Value::Bytes(b) => p.push(b.clone()),
                        _ => return Err(bad("Could not parse body: a path label must be a blob")),
                    }
                }
                parsed.push(p);
            }
            Request::ReadState { paths: parsed }
        }
        other => return Err(bad(format!("Could not parse body: unknown request_type `{other}`"))),
    };

    let max = now.saturating_add(MAX_EXPIRY_AHEAD_NANOS);
    if ingress_expiry < now || ingress_expiry > max {
        return Err(bad(format!(
            "Invalid request expiry: Specified ingress_expiry not within expected range: \
             Minimum allowed expiry: {now}, Maximum allowed expiry: {max}, Provided expiry: {ingress_expiry}"
        )));
    }

    let target = match &request {
        Request::Call { canister_id, .. } | Request::Query { canister_id, .. } => Some(*canister_id),
        Request::ReadState { .. } => None,
    };
    verify_sender(envelope, sender, &request_id, target, now)?;
    Ok(Envelope {
        request_id,
        sender,
        ingress_expiry,
        request,
    })
}

/// The sender's signature of the request id, through its delegations.
fn verify_sender(
    envelope: &[(Value, Value)],
    sender: Principal,
    request_id: &[u8; 32],
    target: Option<Principal>,
    now: u64,
) -> Result<(), Refusal> {
    let pubkey = field(envelope, "sender_pubkey").map(untag);
    let sig = field(envelope, "sender_sig").map(untag);
    if sender == Principal::anonymous() {
        if pubkey.is_some() || sig.is_some() {
            return Err(bad(
                "Invalid signature: an anonymous request must not carry a public key or signature",
            ));
        }
        return Ok(());
    }
    let (Some(Value::Bytes(pubkey)), Some(Value::Bytes(sig))) = (pubkey, sig) else {
        return Err(bad(format!(
            "Invalid signature: request from {sender} is not signed (missing sender_pubkey or sender_sig)"
        )));
    };
    let derived = self_authenticating(pubkey);
    if derived != sender {
        return Err(bad(format!(
            "Invalid user id: the sender {sender} does not match the principal {derived} of the public key"
        )));
    }
    let mut key = pubkey.clone();
    if let Some(chain) = field(envelope, "sender_delegation").map(untag) {
        let Value::Array(chain) = chain else {
            return Err(bad("Could not parse body: `sender_delegation` must be an array"));
        };
        if chain.len() > MAX_DELEGATIONS {
            return Err(bad(format!(
                "Invalid delegation: chain of {} delegations is longer than {MAX_DELEGATIONS}",
                chain.len()
            )));
        }
        for signed in chain {
            let signed = as_map(signed, "a signed delegation")?;
            let delegation = as_map(
                field(signed, "delegation").ok_or_else(|| bad("Invalid delegation: missing `delegation`"))?,
                "a delegation",
            )?;
            let signature = bytes(signed, "signature")?;
            let hash = hash_map(delegation).map_err(|e| bad(format!("Invalid delegation: {e}")))?;
            let msg = [keys::DELEGATION_DOMAIN, &hash[..]].concat();
            keys::verify(&key, &msg, signature)
                .map_err(|e| bad(format!("Invalid delegation: Invalid signature: {e}")))?;
            let expiration = nat(delegation, "expiration")?;
            if expiration < now {
                return Err(bad(format!(
                    "Invalid delegation: Invalid delegation expiry: Specified sender delegation has expired: \
                     Provided expiry: {expiration}, Local replica timestamp: {now}"
                )));
            }
            if let Some(Value::Array(targets)) = field(delegation, "targets").map(untag) {
                let allowed = target.is_none_or(|t| {
                    targets
                        .iter()
                        .any(|v| matches!(untag(v), Value::Bytes(b) if b.as_slice() == t.as_slice()))
                });
                if !allowed {
                    return Err(bad(format!(
                        "Invalid delegation: Canister {} is not one of the delegation targets.",
                        target.expect("checked above")
                    )));
                }
            }
            key = bytes(delegation, "pubkey")?.to_vec();
        }
    }
    let msg = [keys::REQUEST_DOMAIN, &request_id[..]].concat();
    keys::verify(&key, &msg, sig).map_err(|e| bad(format!("Invalid signature: {e}")))
}

#[cfg(test)]
mod tests {
    use super::tests_support::{content, delegated, der, text, NOW};
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    #[test]
    fn a_session_key_signs_for_its_root_identity_through_a_delegation() {
        let (root, session) = (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32]));
        let canister = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 1, 1]);
        let env = authenticate(
            &delegated(&root, &session, NOW + 3_600_000_000_000, Some(vec![canister])),
            NOW,
        )
        .expect("a valid delegation chain");
        assert_eq!(env.sender, self_authenticating(&der(&root)));
    }

    #[test]
    fn expired_untargeted_and_wrongly_signed_delegations_are_refused() {
        let (root, session) = (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32]));
        let later = NOW + 3_600_000_000_000;
        let err = authenticate(&delegated(&root, &session, NOW - 1, None), NOW).unwrap_err();
        assert!(err.message.contains("has expired"), "{err}");
        let elsewhere = Principal::from_slice(&[9; 10]);
        let err = authenticate(&delegated(&root, &session, later, Some(vec![elsewhere])), NOW).unwrap_err();
        assert!(err.message.contains("not one of the delegation targets"), "{err}");
        let stranger = SigningKey::from_bytes(&[3; 32]);
        let mut bytes = delegated(&root, &session, later, None);
        // Re-sign the request with a key the delegation does not name.
        let Value::Tag(_, inner) = ciborium::from_reader::<Value, _>(&bytes[..]).unwrap() else {
            unreachable!()
        };
        let Value::Map(mut fields) = *inner else { unreachable!() };
        let rid = hash_map(as_map(&fields[0].1, "content").unwrap()).unwrap();
        fields[2].1 = Value::Bytes(
            stranger
                .sign(&[keys::REQUEST_DOMAIN, &rid[..]].concat())
                .to_bytes()
                .to_vec(),
        );
        bytes.clear();
        ciborium::into_writer(&Value::Map(fields), &mut bytes).unwrap();
        let err = authenticate(&bytes, NOW).unwrap_err();
        assert!(err.message.starts_with("Invalid signature"), "{err}");
    }

    #[test]
    fn anonymous_requests_carry_no_signature_and_signed_ones_must() {
        let canister = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 1, 1]);
        let encode = |fields: Vec<(Value, Value)>| {
            let mut out = Vec::new();
            ciborium::into_writer(&Value::Map(fields), &mut out).unwrap();
            out
        };
        let anonymous = content(Principal::anonymous(), canister);
        let env = authenticate(&encode(vec![(text("content"), Value::Map(anonymous.clone()))]), NOW).unwrap();
        assert_eq!(env.sender, Principal::anonymous());
        let with_sig = encode(vec![
            (text("content"), Value::Map(anonymous)),
            (text("sender_sig"), Value::Bytes(vec![0; 64])),
        ]);
        assert!(authenticate(&with_sig, NOW).is_err());
        let key = SigningKey::from_bytes(&[4; 32]);
        let unsigned = content(self_authenticating(&der(&key)), canister);
        let err = authenticate(&encode(vec![(text("content"), Value::Map(unsigned))]), NOW).unwrap_err();
        assert!(err.message.contains("is not signed"), "{err}");
    }
}

#[cfg(test)]
mod mutation_tests {
    use super::tests_support::*;
    use super::*;
    use ed25519_dalek::SigningKey;

    /// Thousands of corruptions of a valid delegated envelope (flipped
    /// bits, cut ends, spliced bytes, seeded): none panics, and none is
    /// accepted as a request other than the original.
    #[test]
    fn corrupted_envelopes_are_refused_never_misread() {
        let (root, session) = (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32]));
        let original = delegated(&root, &session, NOW + 3_600_000_000_000, None);
        let reference = authenticate(&original, NOW).expect("the original is valid");
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut refused, mut same) = (0, 0);
        for _ in 0..5_000 {
            let mut bytes = original.clone();
            match next() % 3 {
                0 => {
                    let i = (next() as usize) % bytes.len();
                    bytes[i] ^= 1 << (next() % 8);
                }
                1 => bytes.truncate((next() as usize) % bytes.len()),
                _ => {
                    let i = (next() as usize) % bytes.len();
                    let j = (next() as usize) % bytes.len();
                    let b = bytes[j];
                    bytes.insert(i, b);
                }
            }
            match authenticate(&bytes, NOW) {
                Err(_) => refused += 1,
                Ok(env) => {
                    // Only a change that leaves the request as it was may
                    // pass (the number of the outer CBOR tag, which is not
                    // signed and means nothing).
                    assert_eq!(env.request_id, reference.request_id);
                    assert_eq!(env.sender, reference.sender);
                    same += 1;
                }
            }
        }
        assert!(refused > 4_900, "{refused} refused, {same} read as the original");
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    pub const NOW: u64 = 1_800_000_000_000_000_000;

    pub fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    pub fn der(key: &SigningKey) -> Vec<u8> {
        [&keys::ED25519_DER_PREFIX[..], key.verifying_key().as_bytes()].concat()
    }

    pub fn content(sender: Principal, canister: Principal) -> Vec<(Value, Value)> {
        vec![
            (text("request_type"), text("call")),
            (text("sender"), Value::Bytes(sender.as_slice().to_vec())),
            (text("ingress_expiry"), Value::Integer((NOW + 60_000_000_000).into())),
            (text("canister_id"), Value::Bytes(canister.as_slice().to_vec())),
            (text("method_name"), text("health")),
            (text("arg"), Value::Bytes(b"DIDL\x00\x00".to_vec())),
        ]
    }

    /// An envelope from `root`'s principal, signed by `session` through a
    /// delegation `root` → `session` with `expiration` and `targets`.
    pub fn delegated(
        root: &SigningKey,
        session: &SigningKey,
        expiration: u64,
        targets: Option<Vec<Principal>>,
    ) -> Vec<u8> {
        let canister = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 1, 1]);
        let content = content(self_authenticating(&der(root)), canister);
        let rid = hash_map(&content).unwrap();
        let mut delegation = vec![
            (text("pubkey"), Value::Bytes(der(session))),
            (text("expiration"), Value::Integer(expiration.into())),
        ];
        if let Some(t) = targets {
            let t = t.iter().map(|p| Value::Bytes(p.as_slice().to_vec())).collect();
            delegation.push((text("targets"), Value::Array(t)));
        }
        let dsig = root.sign(&[keys::DELEGATION_DOMAIN, &hash_map(&delegation).unwrap()[..]].concat());
        let sig = session.sign(&[keys::REQUEST_DOMAIN, &rid[..]].concat());
        let envelope = Value::Tag(
            55799,
            Box::new(Value::Map(vec![
                (text("content"), Value::Map(content)),
                (text("sender_pubkey"), Value::Bytes(der(root))),
                (text("sender_sig"), Value::Bytes(sig.to_bytes().to_vec())),
                (
                    text("sender_delegation"),
                    Value::Array(vec![Value::Map(vec![
                        (text("delegation"), Value::Map(delegation)),
                        (text("signature"), Value::Bytes(dsig.to_bytes().to_vec())),
                    ])]),
                ),
            ])),
        );
        let mut out = Vec::new();
        ciborium::into_writer(&envelope, &mut out).unwrap();
        out
    }
}
