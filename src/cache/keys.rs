//! Cache keys: namespaced, versioned, each part a SHA-256 prefix (see the module above).

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Invalidation, NS};

/// Hex digits of the first `bytes` bytes of SHA-256 over `parts`, each followed by a 0 byte.
fn digest_into(out: &mut String, parts: &[&[u8]], bytes: usize) {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0u8]);
    }
    hex_into(out, &h.finalize()[..bytes]);
}

/// The 12 hex digits that stand for one agent or concept name in a key.
fn short(s: &str) -> String {
    let mut out = String::with_capacity(12);
    digest_into(&mut out, &[s.as_bytes()], 6);
    out
}

fn hex_into(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

/// Key of an agent's answer to (concept, intent, args). `args` is canonical already:
/// serde_json keeps object keys sorted.
pub fn response_key(agent: &str, concept: &str, intent: &str, args: &Value) -> String {
    let args = serde_json::to_vec(args).unwrap_or_default();
    let mut key = String::with_capacity(NS.len() + 6 + 13 + 13 + 24);
    key.push_str(NS);
    key.push_str(":resp:");
    digest_into(&mut key, &[agent.as_bytes()], 6);
    key.push(':');
    digest_into(&mut key, &[concept.as_bytes()], 6);
    key.push(':');
    digest_into(
        &mut key,
        &[
            agent.as_bytes(),
            concept.as_bytes(),
            intent.as_bytes(),
            &args,
        ],
        12,
    );
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
