//! The kinds of value a setting may hold: how each is parsed, what its default reads as in
//! the documentation, and how it shows in `/status`.
//!
//! A kind is a small value carrying its default and range (`Ms(2_000, 1, 600_000)`); the
//! settings table in `mod.rs` names one per setting.

use std::{fmt::Display, net::IpAddr, path::PathBuf, str::FromStr, time::Duration};

use serde_json::{json, Value};

use super::Secret;
use crate::agents::endpoint::{normalize_endpoint, HostGuard};

/// Every problem found while parsing, reported together.
#[derive(Debug, Default)]
pub struct Problems {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// One kind of setting value.
pub trait Kind {
    type Out;
    /// Hide the value in `--help` (keys and passwords).
    const SECRET: bool = false;
    /// `raw` is the given text, trimmed; `None` when unset or blank.
    fn parse(&self, env: &str, raw: Option<&str>, p: &mut Problems) -> Self::Out;
    /// The default as the documentation states it.
    fn default_text(&self) -> String;
    /// The value as `/status` shows it.
    fn show(&self, _value: &Self::Out) -> Value {
        Value::Null
    }
}

/// A number within `min..=max`: `Num(default, min, max)`.
pub struct Num<T>(pub T, pub T, pub T);

fn number<T: FromStr + PartialOrd + Display + Copy>(
    env: &str,
    raw: Option<&str>,
    (default, min, max): (T, T, T),
    p: &mut Problems,
) -> T {
    let Some(text) = raw else { return default };
    match text.parse::<T>() {
        Ok(v) if v >= min && v <= max => v,
        Ok(_) => {
            p.errors
                .push(format!("{env}={text:?}: must be between {min} and {max}"));
            default
        }
        Err(_) => {
            p.errors.push(format!("{env}={text:?}: not a number"));
            default
        }
    }
}

impl<T: FromStr + PartialOrd + Display + Copy + serde::Serialize> Kind for Num<T> {
    type Out = T;
    fn parse(&self, env: &str, raw: Option<&str>, p: &mut Problems) -> T {
        number(env, raw, (self.0, self.1, self.2), p)
    }
    fn default_text(&self) -> String {
        format!("`{}`", self.0)
    }
    fn show(&self, value: &T) -> Value {
        json!(value)
    }
}

/// A number without a fixed default: `OptNum(min, max, "what unset means")`.
pub struct OptNum<T>(pub T, pub T, pub &'static str);

impl<T: FromStr + PartialOrd + Display + Copy + serde::Serialize> Kind for OptNum<T> {
    type Out = Option<T>;
    fn parse(&self, env: &str, raw: Option<&str>, p: &mut Problems) -> Option<T> {
        let before = p.errors.len();
        let v = number(env, raw, (self.0, self.0, self.1), p);
        (raw.is_some() && p.errors.len() == before).then_some(v)
    }
    fn default_text(&self) -> String {
        self.2.to_string()
    }
    fn show(&self, value: &Option<T>) -> Value {
        json!(value)
    }
}

/// A number kind whose value is converted: `$name(default, min, max)`.
macro_rules! converted {
    ($(#[$m:meta])* $name:ident($raw:ty) -> $out:ty, |$v:ident| $to:expr, show |$o:ident| $show:expr) => {
        $(#[$m])*
        pub struct $name(pub $raw, pub $raw, pub $raw);

        impl Kind for $name {
            type Out = $out;
            fn parse(&self, env: &str, raw: Option<&str>, p: &mut Problems) -> $out {
                let $v = number(env, raw, (self.0, self.1, self.2), p);
                $to
            }
            fn default_text(&self) -> String {
                format!("`{}`", self.0)
            }
            fn show(&self, $o: &$out) -> Value {
                json!($show)
            }
        }
    };
}

converted!(
    /// Milliseconds: `Ms(default, min, max)`.
    Ms(u64) -> Duration, |v| Duration::from_millis(v), show |d| d.as_millis() as u64
);
converted!(
    /// Whole seconds: `Secs(default, min, max)`.
    Secs(u64) -> Duration, |v| Duration::from_secs(v), show |d| d.as_secs()
);
converted!(
    /// Fractional seconds: `SecsF(default, min, max)`.
    SecsF(f64) -> Duration, |v| Duration::from_secs_f64(v), show |d| d.as_secs_f64()
);
converted!(
    /// A percentage, held as a fraction: `Percent(default, min, max)`.
    Percent(f64) -> f64, |v| v / 100.0, show |f| f * 100.0
);

fn boolean(env: &str, text: &str, p: &mut Problems) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        other => {
            p.errors
                .push(format!("{env}={other:?}: expected true/false (or on/off)"));
            None
        }
    }
}

/// true/false, on/off, yes/no, 1/0: `Flag(default)`.
pub struct Flag(pub bool);

impl Kind for Flag {
    type Out = bool;
    fn parse(&self, env: &str, raw: Option<&str>, p: &mut Problems) -> bool {
        raw.and_then(|t| boolean(env, t, p)).unwrap_or(self.0)
    }
    fn default_text(&self) -> String {
        format!("`{}`", self.0)
    }
    fn show(&self, value: &bool) -> Value {
        json!(value)
    }
}

/// A flag whose default depends on other settings: `OptFlag("what unset means")`.
pub struct OptFlag(pub &'static str);

impl Kind for OptFlag {
    type Out = Option<bool>;
    fn parse(&self, env: &str, raw: Option<&str>, p: &mut Problems) -> Option<bool> {
        raw.and_then(|t| boolean(env, t, p))
    }
    fn default_text(&self) -> String {
        self.0.to_string()
    }
}

/// Free text: `Text("what unset means")`.
pub struct Text(pub &'static str);

impl Kind for Text {
    type Out = Option<String>;
    fn parse(&self, _: &str, raw: Option<&str>, _: &mut Problems) -> Option<String> {
        raw.map(str::to_string)
    }
    fn default_text(&self) -> String {
        self.0.to_string()
    }
    fn show(&self, value: &Option<String>) -> Value {
        json!(value)
    }
}

/// A name: 1–128 characters, not blank, no control characters; `Name("what unset means")`.
pub struct Name(pub &'static str);

impl Kind for Name {
    type Out = Option<String>;
    fn parse(&self, env: &str, raw: Option<&str>, p: &mut Problems) -> Option<String> {
        let text = raw?;
        let fits = !text.trim().is_empty()
            && text.chars().count() <= 128
            && !text.chars().any(char::is_control);
        if !fits {
            p.errors.push(format!(
                "{env}: a name of 1–128 characters, not blank, without control characters"
            ));
            return None;
        }
        Some(text.to_string())
    }
    fn default_text(&self) -> String {
        self.0.to_string()
    }
    fn show(&self, value: &Option<String>) -> Value {
        json!(value)
    }
}

/// Free text with a default value: `TextOr("default")`.
pub struct TextOr(pub &'static str);

impl Kind for TextOr {
    type Out = String;
    fn parse(&self, _: &str, raw: Option<&str>, _: &mut Problems) -> String {
        raw.unwrap_or(self.0).to_string()
    }
    fn default_text(&self) -> String {
        format!("`{}`", self.0)
    }
    fn show(&self, value: &String) -> Value {
        json!(value)
    }
}

/// An http(s) URL, trailing `/` removed: `Url("what unset means")`.
pub struct Url(pub &'static str);

impl Kind for Url {
    type Out = Option<String>;
    fn parse(&self, env: &str, raw: Option<&str>, p: &mut Problems) -> Option<String> {
        let text = raw?;
        match reqwest::Url::parse(text) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {
                Some(text.trim_end_matches('/').to_string())
            }
            _ => {
                p.errors
                    .push(format!("{env}={text:?}: expected an http(s) URL"));
                None
            }
        }
    }
    fn default_text(&self) -> String {
        self.0.to_string()
    }
}

/// An agent endpoint, normalized and checked like a registered one: `Endpoint("…")`.
pub struct Endpoint(pub &'static str);

impl Kind for Endpoint {
    type Out = Option<String>;
    fn parse(&self, env: &str, raw: Option<&str>, p: &mut Problems) -> Option<String> {
        normalize_endpoint(raw?)
            .map_err(|why| p.errors.push(format!("{env}: {why}")))
            .ok()
    }
    fn default_text(&self) -> String {
        self.0.to_string()
    }
}

/// A `redis://` or `rediss://` URL, which may carry a password: `RedisUrl("…")`.
pub struct RedisUrl(pub &'static str);

impl Kind for RedisUrl {
    type Out = Option<Secret>;
    const SECRET: bool = true;
    fn parse(&self, env: &str, raw: Option<&str>, p: &mut Problems) -> Option<Secret> {
        let text = raw?;
        if text.starts_with("redis://") || text.starts_with("rediss://") {
            Some(Secret::new(text))
        } else {
            p.errors
                .push(format!("{env}: expected a redis:// or rediss:// URL"));
            None
        }
    }
    fn default_text(&self) -> String {
        self.0.to_string()
    }
}

/// A key or password, never shown: `SecretText("what unset means")`.
pub struct SecretText(pub &'static str);

impl Kind for SecretText {
    type Out = Option<Secret>;
    const SECRET: bool = true;
    fn parse(&self, _: &str, raw: Option<&str>, _: &mut Problems) -> Option<Secret> {
        raw.map(Secret::new)
    }
    fn default_text(&self) -> String {
        self.0.to_string()
    }
}

/// An existing file: `File("what unset means")`.
pub struct File(pub &'static str);

impl Kind for File {
    type Out = Option<PathBuf>;
    fn parse(&self, env: &str, raw: Option<&str>, p: &mut Problems) -> Option<PathBuf> {
        let path = PathBuf::from(raw?);
        if !path.is_file() {
            p.errors
                .push(format!("{env}={}: no such file", path.display()));
        }
        Some(path)
    }
    fn default_text(&self) -> String {
        self.0.to_string()
    }
}

/// A comma-separated list of lower-case words: `List("default,list")`.
pub struct List(pub &'static str);

impl Kind for List {
    type Out = Vec<String>;
    fn parse(&self, _: &str, raw: Option<&str>, _: &mut Problems) -> Vec<String> {
        raw.unwrap_or(self.0)
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect()
    }
    fn default_text(&self) -> String {
        format!("`{}`", self.0)
    }
    fn show(&self, value: &Vec<String>) -> Value {
        json!(value)
    }
}

/// Comma-separated keys: `Keys("what unset means")`.
pub struct Keys(pub &'static str);

impl Kind for Keys {
    type Out = Vec<Secret>;
    const SECRET: bool = true;
    fn parse(&self, _: &str, raw: Option<&str>, _: &mut Problems) -> Vec<Secret> {
        raw.unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(Secret::new)
            .collect()
    }
    fn default_text(&self) -> String {
        self.0.to_string()
    }
    fn show(&self, value: &Vec<Secret>) -> Value {
        json!(value.len())
    }
}

/// A file of keys, one per line, `#` comments: `KeysFile("what unset means")`.
pub struct KeysFile(pub &'static str);

impl Kind for KeysFile {
    type Out = Vec<Secret>;
    fn parse(&self, env: &str, raw: Option<&str>, p: &mut Problems) -> Vec<Secret> {
        let Some(path) = raw else { return Vec::new() };
        match std::fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(Secret::new)
                .collect(),
            Err(_) => {
                p.errors.push(format!("{env}={path}: cannot be read"));
                Vec::new()
            }
        }
    }
    fn default_text(&self) -> String {
        self.0.to_string()
    }
}

/// Host names and CIDRs: `Hosts(DEFAULT_ALLOWED)`.
pub struct Hosts(pub &'static str);

impl Kind for Hosts {
    type Out = HostGuard;
    fn parse(&self, env: &str, raw: Option<&str>, p: &mut Problems) -> HostGuard {
        HostGuard::parse(raw.unwrap_or(self.0)).unwrap_or_else(|bad| {
            p.errors
                .push(format!("{env}: {bad:?} is neither a host name nor a CIDR"));
            HostGuard::default()
        })
    }
    fn default_text(&self) -> String {
        format!("`{}`", self.0)
    }
    fn show(&self, value: &HostGuard) -> Value {
        json!(value.to_string())
    }
}

/// An IP address to listen on (`localhost` = 127.0.0.1): `Ip("0.0.0.0")`.
pub struct Ip(pub &'static str);

impl Kind for Ip {
    type Out = IpAddr;
    fn parse(&self, env: &str, raw: Option<&str>, p: &mut Problems) -> IpAddr {
        let default = self.0.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        match raw {
            None => default,
            Some("localhost") => IpAddr::from([127, 0, 0, 1]),
            Some(h) => h.parse().unwrap_or_else(|_| {
                p.errors
                    .push(format!("{env}={h:?}: expected an IP address"));
                default
            }),
        }
    }
    fn default_text(&self) -> String {
        format!("`{}`", self.0)
    }
    fn show(&self, value: &IpAddr) -> Value {
        json!(value.to_string())
    }
}

/// Accepted for compatibility, ignored with a warning: `Ignored("why")`.
pub struct Ignored(pub &'static str);

impl Kind for Ignored {
    type Out = ();
    fn parse(&self, env: &str, raw: Option<&str>, p: &mut Problems) {
        if raw.is_some() {
            p.warnings.push(format!("{env} is ignored: {}", self.0));
        }
    }
    fn default_text(&self) -> String {
        "unset".to_string()
    }
}

/// A value named by one of a fixed set of words.
pub trait Named: Copy + PartialEq + 'static {
    /// Every accepted word; the first naming a value is its canonical name.
    const NAMES: &'static [(&'static str, Self)];
    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("", |(n, _)| n)
    }
}

/// One of a fixed set of words: `Choice(default)`.
pub struct Choice<E>(pub E);

impl<E: Named> Kind for Choice<E> {
    type Out = E;
    fn parse(&self, env: &str, raw: Option<&str>, p: &mut Problems) -> E {
        let Some(text) = raw else { return self.0 };
        let lower = text.to_ascii_lowercase();
        match E::NAMES.iter().find(|(n, _)| *n == lower) {
            Some((_, v)) => *v,
            None => {
                let mut names: Vec<&str> = Vec::new();
                for (n, v) in E::NAMES {
                    if v.name() == *n {
                        names.push(n);
                    }
                }
                p.errors
                    .push(format!("{env}={lower:?}: expected {}", names.join(" or ")));
                self.0
            }
        }
    }
    fn default_text(&self) -> String {
        format!("`{}`", self.0.name())
    }
    fn show(&self, value: &E) -> Value {
        json!(value.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_outside_their_range_name_the_range() {
        let mut p = Problems::default();
        assert_eq!(Num(5u32, 1, 10).parse("N", Some("11"), &mut p), 5);
        assert_eq!(Num(5u32, 1, 10).parse("N", Some("x"), &mut p), 5);
        assert_eq!(
            p.errors,
            [
                "N=\"11\": must be between 1 and 10",
                "N=\"x\": not a number"
            ]
        );
        assert_eq!(OptNum(1u32, 9, "").parse("N", Some("0"), &mut p), None);
        assert_eq!(OptNum(1u32, 9, "").parse("N", Some("3"), &mut p), Some(3));
    }

    #[test]
    fn a_choice_lists_its_canonical_names() {
        #[derive(Clone, Copy, PartialEq, Debug)]
        enum Fmt {
            Text,
            Json,
        }
        impl Named for Fmt {
            const NAMES: &'static [(&'static str, Self)] = &[
                ("text", Fmt::Text),
                ("pretty", Fmt::Text),
                ("json", Fmt::Json),
            ];
        }
        let mut p = Problems::default();
        assert_eq!(
            Choice(Fmt::Text).parse("F", Some("PRETTY"), &mut p),
            Fmt::Text
        );
        assert_eq!(Choice(Fmt::Text).parse("F", Some("xml"), &mut p), Fmt::Text);
        assert_eq!(p.errors, ["F=\"xml\": expected text or json"]);
    }
}
