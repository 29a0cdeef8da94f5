//! The seed file: the public format that fills a knowledge graph.
//!
//! ```json
//! {"regions":[{"name":"Technology"}],
//!  "concepts":[{"name":"lightbulb","primary_definition":"...","region":"Technology"}],
//!  "agents":[{"name":"Lightbulb_Definition_AI","type":"static","endpoint":"http://127.0.0.1:5001/query",
//!             "intents":["define"],"capabilities":[],"region":"Technology"}],
//!  "handles":[{"agent":"Lightbulb_Definition_AI","concept":"lightbulb","weight":1.0}]}
//! ```
//! An endpoint written `{demo:<name>}` stands for that built-in demo agent, wherever it listens.

use crate::agents::endpoint::normalize_endpoint;
use std::{collections::HashSet, path::Path};

use serde::Deserialize;

use super::normalize_concept;

/// The seed shipped with the service, used when `GRAPH_SEED` is unset.
pub const DEFAULT_SEED: &str = include_str!("../../seed/default.json");

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Seed {
    pub regions: Vec<SeedRegion>,
    pub concepts: Vec<SeedConcept>,
    pub agents: Vec<SeedAgent>,
    pub handles: Vec<SeedHandle>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedRegion {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedConcept {
    pub name: String,
    #[serde(default)]
    pub primary_definition: String,
    #[serde(default)]
    pub region: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedAgent {
    pub name: String,
    #[serde(rename = "type", default = "default_agent_type")]
    pub agent_type: String,
    pub endpoint: String,
    pub intents: Vec<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub region: Option<String>,
}

impl SeedAgent {
    /// The agent as the graph holds it: active, nothing learned yet.
    pub fn info(&self) -> super::AgentInfo {
        super::AgentInfo {
            name: self.name.clone(),
            agent_type: self.agent_type.clone(),
            endpoint: self.endpoint.clone(),
            status: "active".to_string(),
            intents: self.intents.clone(),
            capabilities: self.capabilities.clone(),
            facts: None,
        }
    }
}

fn default_agent_type() -> String {
    "static".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedHandle {
    pub agent: String,
    pub concept: String,
    #[serde(default = "default_weight")]
    pub weight: f64,
}

fn default_weight() -> f64 {
    0.5
}

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot read seed file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("seed is not valid: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("seed is not valid: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// The prefix of a placeholder endpoint naming a built-in demo agent.
pub const DEMO_PREFIX: &str = "{demo:";

/// The demo agent a placeholder endpoint names, if it is one.
pub fn demo_placeholder(endpoint: &str) -> Option<&str> {
    endpoint.strip_prefix(DEMO_PREFIX)?.strip_suffix('}')
}

impl Seed {
    pub fn from_file(path: &Path) -> Result<Seed, SeedError> {
        let text = std::fs::read_to_string(path).map_err(|source| SeedError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Seed::parse(&text)
    }

    /// Parses and validates a seed; every problem found is named.
    pub fn parse(text: &str) -> Result<Seed, SeedError> {
        let mut seed: Seed = serde_json::from_str(text)?;
        seed.validate()?;
        for c in &mut seed.concepts {
            c.name = normalize_concept(&c.name);
        }
        for h in &mut seed.handles {
            h.concept = normalize_concept(&h.concept);
        }
        for a in &mut seed.agents {
            if let Ok(endpoint) = normalize_endpoint(&a.endpoint) {
                a.endpoint = endpoint;
            }
        }
        Ok(seed)
    }

    fn validate(&self) -> Result<(), SeedError> {
        let mut problems = Vec::new();
        let regions: HashSet<&str> = self.regions.iter().map(|r| r.name.as_str()).collect();
        let mut concepts = HashSet::new();
        for c in &self.concepts {
            let name = normalize_concept(&c.name);
            if let Err(why) = validate_name(&name) {
                problems.push(format!("concept {:?}: {why}", c.name));
            }
            if !concepts.insert(name) {
                problems.push(format!("concept {:?} is listed twice", c.name));
            }
            if let Some(r) = &c.region {
                if !regions.contains(r.as_str()) {
                    problems.push(format!("concept {:?}: unknown region {r:?}", c.name));
                }
            }
        }
        let mut agents = HashSet::new();
        for a in &self.agents {
            if let Err(why) = validate_agent_name(&a.name) {
                problems.push(format!("agent {:?}: {why}", a.name));
            }
            if !agents.insert(a.name.as_str()) {
                problems.push(format!("agent {:?} is listed twice", a.name));
            }
            if demo_placeholder(&a.endpoint).is_none() {
                if let Err(why) = normalize_endpoint(&a.endpoint) {
                    // The endpoint itself is not echoed: it may hold a secret.
                    problems.push(format!("agent {:?}: {why}", a.name));
                }
            }
            if a.intents.is_empty() {
                problems.push(format!("agent {:?} lists no intents", a.name));
            }
            if let Some(r) = &a.region {
                if !regions.contains(r.as_str()) {
                    problems.push(format!("agent {:?}: unknown region {r:?}", a.name));
                }
            }
        }
        for h in &self.handles {
            if !agents.contains(h.agent.as_str()) {
                problems.push(format!("handles: unknown agent {:?}", h.agent));
            }
            if !concepts.contains(&normalize_concept(&h.concept)) {
                problems.push(format!("handles: unknown concept {:?}", h.concept));
            }
            if !(0.0..=1.0).contains(&h.weight) || h.weight.is_nan() {
                problems.push(format!(
                    "handles {}→{}: weight {} is outside [0, 1]",
                    h.agent, h.concept, h.weight
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SeedError::Invalid(problems))
        }
    }
}

/// Rules for agent and concept names: 1–128 characters, no control characters.
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err("name is empty");
    }
    if trimmed.chars().count() > 128 {
        return Err("name is longer than 128 characters");
    }
    if trimmed.chars().any(char::is_control) {
        return Err("name contains control characters");
    }
    Ok(())
}

/// Agent names also appear in URL paths (`DELETE /agents/{name}`), metric labels and logs:
/// on top of [`validate_name`], no `/`, `\\`, `..`, and no bidirectional-override or
/// zero-width characters that would make a name read as another.
pub fn validate_agent_name(name: &str) -> Result<(), &'static str> {
    validate_name(name)?;
    if name.contains(['/', '\\']) || name.contains("..") {
        return Err("name contains '/', '\\' or '..'");
    }
    if name.chars().any(crate::agents::endpoint::is_invisible) {
        return Err("name contains bidirectional-override or invisible characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names_that_could_pass_for_paths_or_other_names_are_refused() {
        assert!(validate_agent_name("Lightbulb_Definition_AI").is_ok());
        assert!(validate_agent_name("Agent 7 (eu-west)").is_ok());
        for bad in [
            "a/b",
            "..",
            "x..y",
            "a\\b",
            "evil\u{202E}IA_",
            "zero\u{200B}width",
            "",
        ] {
            assert!(validate_agent_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_default_seed_is_valid() {
        let seed = Seed::parse(DEFAULT_SEED).unwrap();
        assert!(seed
            .agents
            .iter()
            .any(|a| a.name == "Lightbulb_Definition_AI"));
        assert!(seed
            .agents
            .iter()
            .any(|a| a.name == "Lightbulb_Function_AI"));
    }

    #[test]
    fn unknown_references_are_named() {
        let text = r#"{"concepts":[{"name":"lamp"}],
            "agents":[{"name":"A","endpoint":"http://127.0.0.1:1/q","intents":["define"]}],
            "handles":[{"agent":"B","concept":"lamp"},{"agent":"A","concept":"sun","weight":2}]}"#;
        let SeedError::Invalid(problems) = Seed::parse(text).unwrap_err() else {
            panic!("expected a validation error");
        };
        assert!(problems.iter().any(|p| p.contains("unknown agent \"B\"")));
        assert!(problems
            .iter()
            .any(|p| p.contains("unknown concept \"sun\"")));
        assert!(problems.iter().any(|p| p.contains("outside [0, 1]")));
    }

    #[test]
    fn bad_endpoints_and_unknown_fields_are_rejected() {
        let text = r#"{"agents":[{"name":"A","endpoint":"ftp://x","intents":["define"]}]}"#;
        assert!(matches!(Seed::parse(text), Err(SeedError::Invalid(_))));
        let text = r#"{"agents":[], "nodes": []}"#;
        assert!(matches!(Seed::parse(text), Err(SeedError::Parse(_))));
        for endpoint in [
            "http://:s3cr3t@127.0.0.1:1/query",
            "http://127.0.0.1/query\\r\\nX-Injected: 1",
            "http://127.0.0.1\\\\@evil.example/",
        ] {
            let text = format!(
                r#"{{"agents":[{{"name":"A","endpoint":"{endpoint}","intents":["define"]}}]}}"#
            );
            match Seed::parse(&text) {
                Err(SeedError::Invalid(p)) => {
                    assert!(!p.join(" ").contains("s3cr3t"), "{p:?}")
                }
                other => panic!("{endpoint:?} accepted: {other:?}"),
            }
        }
        let text = r#"{"concepts":[{"name":"lamp"}],"agents":[{"name":"A","endpoint":"HTTP://LOCALHOST:80/q","intents":["define"]}]}"#;
        assert_eq!(
            Seed::parse(text).unwrap().agents[0].endpoint,
            "http://localhost/q"
        );
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let text = r#"{"concepts":[{"name":"Lamp"},{"name":"lamp"}]}"#;
        assert!(matches!(Seed::parse(text), Err(SeedError::Invalid(_))));
    }

    #[test]
    fn placeholders_name_demo_agents() {
        assert_eq!(demo_placeholder("{demo:factbase}"), Some("factbase"));
        assert_eq!(demo_placeholder("http://x"), None);
    }
}
