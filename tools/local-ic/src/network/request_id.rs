//! Request ids: the interface spec's representation-independent hash of
//! a CBOR value (text and blobs hash their bytes, naturals their LEB128,
//! arrays the concatenation of their elements' hashes, maps the sorted
//! concatenation of each field's key hash and value hash).

use ciborium::Value;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("value cannot be hashed for a request id: {0}")]
pub struct HashError(pub &'static str);

pub fn leb128(mut n: u128) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn sleb128(mut n: i128) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        let done = (n == 0 && byte & 0x40 == 0) || (n == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// The representation-independent hash of `value`.
pub fn hash_value(value: &Value) -> Result<[u8; 32], HashError> {
    Ok(match value {
        Value::Text(s) => Sha256::digest(s.as_bytes()).into(),
        Value::Bytes(b) => Sha256::digest(b).into(),
        Value::Integer(i) => {
            let n = i128::from(*i);
            if n >= 0 {
                Sha256::digest(leb128(n as u128)).into()
            } else {
                Sha256::digest(sleb128(n)).into()
            }
        }
        Value::Array(items) => {
            let mut h = Sha256::new();
            for item in items {
                h.update(hash_value(item)?);
            }
            h.finalize().into()
        }
        Value::Map(fields) => hash_map(fields)?,
        Value::Tag(_, inner) => hash_value(inner)?,
        Value::Bool(_) => return Err(HashError("booleans have no hash")),
        Value::Null => return Err(HashError("null has no hash")),
        Value::Float(_) => return Err(HashError("floats have no hash")),
        _ => return Err(HashError("unsupported CBOR value")),
    })
}

/// The hash of a map (an envelope's `content`, a delegation, a signed
/// query response).
pub fn hash_map(fields: &[(Value, Value)]) -> Result<[u8; 32], HashError> {
    let mut pairs = Vec::with_capacity(fields.len());
    for (key, value) in fields {
        let Value::Text(key) = key else {
            return Err(HashError("map keys must be text"));
        };
        let mut pair = Vec::with_capacity(64);
        pair.extend_from_slice(&Sha256::digest(key.as_bytes()));
        pair.extend_from_slice(&hash_value(value)?);
        pairs.push(pair);
    }
    pairs.sort();
    let mut h = Sha256::new();
    for pair in pairs {
        h.update(pair);
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The interface spec's example request id ("Request ids"): a call to
    /// `hello` with arg "DIDL\x00\xFD*" and sender 0x04.
    #[test]
    fn the_specs_example_call_has_the_specs_request_id() {
        let content = vec![
            (text("request_type"), text("call")),
            (text("sender"), Value::Bytes(vec![0x04])),
            (
                text("ingress_expiry"),
                Value::Integer(1_685_570_400_000_000_000u64.into()),
            ),
            (text("canister_id"), Value::Bytes(vec![0, 0, 0, 0, 0, 0, 0x04, 0xD2])),
            (text("method_name"), text("hello")),
            (text("arg"), Value::Bytes(b"DIDL\x00\xFD*".to_vec())),
        ];
        assert_eq!(
            hex(&hash_map(&content).unwrap()),
            "1d1091364d6bb8a6c16b203ee75467d59ead468f523eb058880ae8ec80e2b101"
        );
    }

    #[test]
    fn leb128_matches_the_examples_of_its_definition() {
        assert_eq!(leb128(624_485), vec![0xE5, 0x8E, 0x26]);
        assert_eq!(sleb128(-123_456), vec![0xC0, 0xBB, 0x78]);
        assert_eq!(leb128(0), vec![0]);
    }
}
