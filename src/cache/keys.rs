//! Cache keys: namespaced, versioned, each part a SHA-256 prefix (see the module above).

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Invalidation, NS};

/// Hex digits of the first `bytes` bytes of SHA-256 over `parts`, each followed by a 0 byte.
fn digest_into(out: &mut String, parts: &[&[u8]], bytes: usize) {
    hex_into(out, &hashing(parts).finalize()[..bytes]);
}

/// SHA-256 fed `parts`, each followed by a 0 byte.
fn hashing(parts: &[&[u8]]) -> Sha256 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0u8]);
    }
    h
}

/// The 12 hex digits that stand for one agent or concept name in a key.
fn short(s: &str) -> String {
    let mut out = String::with_capacity(12);
    digest_into(&mut out, &[s.as_bytes()], 6);
    out
}

/// `bytes` (at most a digest's 32) as lowercase hex, appended in one piece.
fn hex_into(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 64];
    for (pair, b) in digits.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
    let n = 2 * bytes.len().min(32);
    out.push_str(std::str::from_utf8(&digits[..n]).unwrap_or_default());
}

/// Key of an agent's answer to (concept, intent, args). `args` is canonical already:
/// serde_json keeps object keys sorted. The args are hashed as they are written (no copy
/// of their text).
pub fn response_key(agent: &str, concept: &str, intent: &str, args: &Value) -> String {
    let mut key = String::with_capacity(NS.len() + 6 + 13 + 13 + 24);
    key.push_str(NS);
    key.push_str(":resp:");
    digest_into(&mut key, &[agent.as_bytes()], 6);
    key.push(':');
    digest_into(&mut key, &[concept.as_bytes()], 6);
    key.push(':');
    let mut h = hashing(&[agent.as_bytes(), concept.as_bytes(), intent.as_bytes()]);
    // Writing into a hash cannot fail.
    let _ = serde_json::to_writer(&mut h, args);
    h.update([0u8]);
    hex_into(&mut key, &h.finalize()[..12]);
    key
}

/// Key of the ranked candidates for (concept, intent).
pub fn discovery_key(concept: &str, intent: &str) -> String {
    let mut key = String::with_capacity(NS.len() + 6 + 13 + 24);
    key.push_str(NS);
    key.push_str(":disc:");
    digest_into(&mut key, &[concept.as_bytes()], 6);
    key.push(':');
    digest_into(&mut key, &[concept.as_bytes(), intent.as_bytes()], 12);
    key
}

/// L2 key patterns covering an invalidation.
pub fn l2_patterns(inv: &Invalidation) -> Vec<String> {
    let mut p = Vec::new();
    for a in &inv.agents {
        p.push(format!("{NS}:resp:{}:", short(a)));
    }
    for c in &inv.concepts {
        p.push(format!("{NS}:disc:{}:", short(c)));
        p.push(format!("{NS}:resp:*:{}:", short(c)));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key as its definition reads: SHA-256 prefixes in hex, each part followed by a
    /// 0 byte, the args as their compact JSON text.
    fn by_definition(agent: &str, concept: &str, intent: &str, args: &Value) -> String {
        let hex = |parts: &[&[u8]], n: usize| {
            let mut text = Vec::new();
            for p in parts {
                text.extend_from_slice(p);
                text.push(0);
            }
            Sha256::digest(&text)[..n]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let args = args.to_string();
        format!(
            "myriad:v1:resp:{}:{}:{}",
            hex(&[agent.as_bytes()], 6),
            hex(&[concept.as_bytes()], 6),
            hex(
                &[
                    agent.as_bytes(),
                    concept.as_bytes(),
                    intent.as_bytes(),
                    args.as_bytes()
                ],
                12
            )
        )
    }

    #[test]
    fn a_response_key_is_its_definition() {
        for (agent, concept, intent, args) in [
            ("Bench_AI", "bench", "define", serde_json::json!({})),
            ("", "", "", Value::Null),
            (
                "A",
                "café",
                "x\"y",
                serde_json::json!({"b": [1, 2.5, "é\n"], "a": {"z": null}}),
            ),
        ] {
            let key = response_key(agent, concept, intent, &args);
            assert_eq!(key, by_definition(agent, concept, intent, &args));
            assert!(key.starts_with(&format!(
                "myriad:v1:resp:{}:{}:",
                short(agent),
                short(concept)
            )));
        }
    }
}
