//! The built-in input processor: a question in English becomes (concept, intent) tasks.
//!
//! "What is / define / describe X" → define; "how does X work", "function of X" → function;
//! "impact of X" → explain_impact; "compare X and Y" → compare (with `args.with = Y`);
//! "history of X" → analyze_historical_context; "limitations of X" → explain_limitation;
//! "turn on / turn off / dim X", "status of X" → device intents. Articles, punctuation and
//! case are stripped, so "Define a lightbulb" → (lightbulb, define). Anything else is taken
//! as a concept to define.

use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct ParsedTask {
    pub concept: String,
    pub intent: String,
    pub args: Value,
}

const ARTICLES: [&str; 3] = ["a", "an", "the"];
const FILLERS: [&str; 6] = ["please", "me", "about", "tell", "can", "you"];

fn words(query: &str) -> Vec<String> {
    query
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect::<String>()
        .to_lowercase()
        .split_whitespace()
        .map(|w| w.trim_matches(|c| c == '\'' || c == '-').to_string())
        .map(|w| match w.as_str() {
            "what's" => "what is".to_string(),
            _ => w.strip_suffix("'s").map(str::to_string).unwrap_or(w),
        })
        .flat_map(|w| w.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|w| !w.is_empty())
        .collect()
}

/// The concept named by `words`, without articles and leading filler.
fn concept(words: &[String]) -> Option<String> {
    let kept: Vec<&str> = words
        .iter()
        .map(String::as_str)
        .skip_while(|w| FILLERS.contains(w))
        .filter(|w| !ARTICLES.contains(w))
        .collect();
    (!kept.is_empty()).then(|| kept.join(" "))
}

fn task(concept: String, intent: &str, args: Value) -> ParsedTask {
    ParsedTask {
        concept,
        intent: intent.to_string(),
        args,
    }
}

fn position(words: &[String], phrase: &[&str]) -> Option<usize> {
    words
        .windows(phrase.len())
        .position(|w| w.iter().zip(phrase).all(|(a, b)| a == b))
}

/// The words after `phrase`, if the query contains it.
fn after<'a>(words: &'a [String], phrase: &[&str]) -> Option<&'a [String]> {
    position(words, phrase).map(|i| &words[i + phrase.len()..])
}

/// Parses a query into tasks; empty when it names no concept at all.
pub fn parse(query: &str) -> Vec<ParsedTask> {
    let w = words(query);
    if w.is_empty() {
        return Vec::new();
    }
    let first = w[0].as_str();

    if let Some(rest) = after(&w, &["compare"]) {
        let split = rest
            .iter()
            .position(|x| matches!(x.as_str(), "and" | "with" | "to" | "vs" | "versus"));
        if let Some(i) = split {
            if let (Some(a), Some(b)) = (concept(&rest[..i]), concept(&rest[i + 1..])) {
                return vec![task(a, "compare", json!({ "with": b }))];
            }
        }
        if let Some(a) = concept(rest) {
            return vec![task(a, "compare", json!({}))];
        }
    }
    for (phrase, intent) in [
        (&["impact", "of"][..], "explain_impact"),
        (&["effect", "of"][..], "explain_impact"),
        (&["effects", "of"][..], "explain_impact"),
        (&["function", "of"][..], "function"),
        (&["purpose", "of"][..], "function"),
        (&["history", "of"][..], "analyze_historical_context"),
        (
            &["historical", "context", "of"][..],
            "analyze_historical_context",
        ),
        (&["limitations", "of"][..], "explain_limitation"),
        (&["limitation", "of"][..], "explain_limitation"),
        (&["status", "of"][..], "status"),
    ] {
        if let Some(c) = after(&w, phrase).and_then(concept) {
            return vec![task(c, intent, json!({}))];
        }
    }
    // "how does X work", "how do X work"
    if first == "how" && w.len() >= 3 && matches!(w[1].as_str(), "does" | "do") {
        let end = w
            .iter()
            .rposition(|x| x.starts_with("work"))
            .unwrap_or(w.len());
        if let Some(c) = concept(&w[2..end.max(2)]) {
            return vec![task(c, "function", json!({}))];
        }
    }
    // "turn on X", "switch off X"
    if matches!(first, "turn" | "switch") && w.len() > 2 {
        let intent = match w[1].as_str() {
            "on" => Some("turn_on"),
            "off" => Some("turn_off"),
            _ => None,
        };
        if let (Some(intent), Some(c)) = (intent, concept(&w[2..])) {
            return vec![task(c, intent, json!({}))];
        }
    }
    if first == "dim" {
        let level = w
            .iter()
            .find_map(|x| x.trim_end_matches('%').parse::<u64>().ok());
        let rest: Vec<String> = w[1..]
            .iter()
            .take_while(|x| x.as_str() != "to")
            .cloned()
            .collect();
        if let Some(c) = concept(&rest) {
            let args = level.map_or(json!({}), |l| json!({ "level": l.min(100) }));
            return vec![task(c, "dim", args)];
        }
    }
    // "what is X", "what are X", "define X", "describe X", "explain X", "tell me about X"
    let rest: &[String] = match first {
        "what" | "who" if w.len() > 2 && matches!(w[1].as_str(), "is" | "are" | "was" | "were") => {
            &w[2..]
        }
        "define" | "describe" | "explain" | "definition" => &w[1..],
        _ => &w[..],
    };
    let rest: &[String] = match rest.first().map(String::as_str) {
        Some("of") => &rest[1..],
        _ => rest,
    };
    concept(rest)
        .map(|c| vec![task(c, "define", json!({}))])
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(q: &str) -> (String, String) {
        let t = parse(q);
        assert_eq!(t.len(), 1, "{q:?} → {t:?}");
        (t[0].concept.clone(), t[0].intent.clone())
    }

    fn pair(c: &str, i: &str) -> (String, String) {
        (c.to_string(), i.to_string())
    }

    #[test]
    fn definitions() {
        assert_eq!(one("Define a lightbulb"), pair("lightbulb", "define"));
        assert_eq!(one("What is a lightbulb?"), pair("lightbulb", "define"));
        assert_eq!(one("what's the lightbulb"), pair("lightbulb", "define"));
        assert_eq!(one("Describe factories."), pair("factories", "define"));
        assert_eq!(
            one("Tell me about the LIGHTBULB!"),
            pair("lightbulb", "define")
        );
        assert_eq!(one("lightbulb"), pair("lightbulb", "define"));
        assert_eq!(
            one("What are solar panels?"),
            pair("solar panels", "define")
        );
    }

    #[test]
    fn functions_and_impacts() {
        assert_eq!(
            one("How does a lightbulb work?"),
            pair("lightbulb", "function")
        );
        assert_eq!(
            one("What is the function of a lightbulb"),
            pair("lightbulb", "function")
        );
        assert_eq!(
            one("What was the impact of the lightbulb?"),
            pair("lightbulb", "explain_impact")
        );
        assert_eq!(
            one("history of the lightbulb"),
            pair("lightbulb", "analyze_historical_context")
        );
        assert_eq!(
            one("limitations of a lightbulb"),
            pair("lightbulb", "explain_limitation")
        );
    }

    #[test]
    fn comparisons_carry_the_other_side() {
        let t = parse("Compare a lightbulb and a candle");
        assert_eq!(t[0].concept, "lightbulb");
        assert_eq!(t[0].intent, "compare");
        assert_eq!(t[0].args, json!({"with": "candle"}));
    }

    #[test]
    fn device_commands() {
        assert_eq!(one("Turn on the lightbulb"), pair("lightbulb", "turn_on"));
        assert_eq!(one("switch off lightbulb"), pair("lightbulb", "turn_off"));
        let t = parse("dim the lightbulb to 30%");
        assert_eq!(
            (t[0].intent.as_str(), &t[0].args),
            ("dim", &json!({"level": 30}))
        );
    }

    #[test]
    fn nothing_to_parse() {
        assert!(parse("").is_empty());
        assert!(parse("?!... ---").is_empty());
        assert!(parse("the a an").is_empty());
    }

    #[test]
    fn hostile_input_does_not_panic() {
        for q in [
            "how does",
            "compare",
            "compare and",
            "dim",
            "what is",
            "turn on",
            "of",
            "\u{0}\u{202e}’s",
        ] {
            let _ = parse(q);
        }
    }
}
