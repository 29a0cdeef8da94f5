//! Wire types poem-openapi does not have: strict strings, checked strings, nullable
//! values, JSON objects and task ids, each keeping its schema in the spec.

use std::borrow::Cow;

use poem_openapi::{
    registry::{MetaSchemaRef, Registry},
    types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
};
use serde_json::Value;

/// The parts of poem-openapi's `Type` every hand-written wrapper here shares: required,
/// one raw value (`value`), and its name and schema (and what it registers, if anything).
macro_rules! wrapper_type {
    (
        impl$(<$g:ident: $bound:path>)? for $ty:ty,
        raw = $raw:ty,
        value = |$s:ident| $value:expr,
        name = $name:expr,
        schema = $schema:expr
        $(, register = |$r:ident| $register:expr)?
    ) => {
        impl$(<$g: $bound>)? Type for $ty {
            const IS_REQUIRED: bool = true;
            type RawValueType = $raw;
            type RawElementValueType = $raw;

            fn name() -> Cow<'static, str> {
                $name
            }
            fn schema_ref() -> MetaSchemaRef {
                $schema
            }
            $(fn register($r: &mut Registry) {
                $register
            })?
            fn as_raw_value(&self) -> Option<&Self::RawValueType> {
                let $s = self;
                Some($value)
            }
            fn raw_element_iter<'a>(
                &'a self,
            ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
                let $s = self;
                Box::new(std::iter::once($value))
            }
        }
    };
}

/// A JSON string, strictly: unlike poem-openapi's `String`, a number or a boolean is a 400,
/// not silently turned into text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

wrapper_type!(
    impl for Text,
    raw = String,
    value = |t| &t.0,
    name = String::name(),
    schema = String::schema_ref()
);

impl ParseFromJSON for Text {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(s)) => Ok(Text(s)),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl ToJSON for Text {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

/// A string rule: the pattern and length declared in the spec, checked by a test of the
/// characters that says the same as the pattern (a unit test holds the two to each other
/// over every character class the patterns name).
pub trait Rule: Send + Sync + 'static {
    const NAME: &'static str;
    const PATTERN: &'static str;
    const MAX_LENGTH: usize;
    /// Whether `s` matches [`Rule::PATTERN`].
    fn matches(s: &str) -> bool;
}

macro_rules! rule {
    ($ty:ident, $name:literal, $pattern:literal, $max:literal, $matches:expr) => {
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $ty;
        impl Rule for $ty {
            const NAME: &'static str = $name;
            const PATTERN: &'static str = $pattern;
            const MAX_LENGTH: usize = $max;
            fn matches(s: &str) -> bool {
                let matches: fn(&str) -> bool = $matches;
                matches(s)
            }
        }
    };
}

/// C0 and C1 control characters and DEL.
fn control(c: char) -> bool {
    matches!(c, '\x00'..='\x1F' | '\x7F' | '\u{80}'..='\u{9F}')
}

rule!(
    ConceptRule,
    "concept",
    r"^[^\x00-\x1F\x7F\u0080-\u009F]*[^\s\x00-\x1F\x7F\u0080-\u009F][^\x00-\x1F\x7F\u0080-\u009F]*$",
    128,
    |s| !s.chars().any(control) && s.chars().any(|c| !c.is_whitespace())
);
rule!(IntentRule, "intent", r"^[A-Za-z0-9_-]{1,64}$", 64, |s| {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
});
rule!(QueryRule, "query", r"\S", 2000, |s| s
    .chars()
    .any(|c| !c.is_whitespace()));

/// A string that satisfies `R` (else the body is a 400 naming the rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked<R: Rule>(pub String, std::marker::PhantomData<R>);

impl<R: Rule> std::ops::Deref for Checked<R> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

wrapper_type!(
    impl<R: Rule> for Checked<R>,
    raw = String,
    value = |c| &c.0,
    name = R::NAME.into(),
    schema = MetaSchemaRef::Inline(Box::new(poem_openapi::registry::MetaSchema {
        max_length: Some(R::MAX_LENGTH),
        pattern: Some(R::PATTERN.to_string()),
        ..poem_openapi::registry::MetaSchema::new("string")
    }))
);

impl<R: Rule> Checked<R> {
    /// `s`, if it satisfies the rule.
    pub fn check(s: String) -> Option<Self> {
        (s.chars().count() <= R::MAX_LENGTH && R::matches(&s))
            .then_some(Checked(s, std::marker::PhantomData))
    }
}

impl<R: Rule> ParseFromJSON for Checked<R> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(s)) => Checked::check(s).ok_or_else(|| {
                ParseError::custom(format!(
                    "{} must be at most {} characters matching {}",
                    R::NAME,
                    R::MAX_LENGTH,
                    R::PATTERN
                ))
            }),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl<R: Rule> ToJSON for Checked<R> {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

/// A value that may be JSON `null`, declared `nullable` in the spec (OpenAPI 3.0), and
/// always present when serialized (`"agent_url": null` is part of the contract).
#[derive(Debug, Clone, PartialEq)]
pub struct Nullable<T>(pub Option<T>);

impl<T: Type> Type for Nullable<T> {
    const IS_REQUIRED: bool = true;
    type RawValueType = T::RawValueType;
    type RawElementValueType = T::RawElementValueType;

    fn name() -> Cow<'static, str> {
        format!("nullable<{}>", T::name()).into()
    }
    fn schema_ref() -> MetaSchemaRef {
        use poem_openapi::registry::MetaSchema;
        match T::schema_ref() {
            MetaSchemaRef::Inline(schema) => MetaSchemaRef::Inline(Box::new(MetaSchema {
                nullable: true,
                ..*schema
            })),
            reference => MetaSchemaRef::Inline(Box::new(MetaSchema {
                nullable: true,
                all_of: vec![reference],
                ..MetaSchema::ANY
            })),
        }
    }
    fn register(registry: &mut Registry) {
        T::register(registry)
    }
    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        self.0.as_ref().and_then(|t| t.as_raw_value())
    }
    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        match &self.0 {
            Some(t) => t.raw_element_iter(),
            None => Box::new(std::iter::empty()),
        }
    }
}

impl<T: ParseFromJSON> ParseFromJSON for Nullable<T> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            None | Some(Value::Null) => Ok(Nullable(None)),
            v => T::parse_from_json(v)
                .map(|t| Nullable(Some(t)))
                .map_err(ParseError::propagate),
        }
    }
}

impl<T: ToJSON> ToJSON for Nullable<T> {
    fn to_json(&self) -> Option<Value> {
        Some(
            self.0
                .as_ref()
                .and_then(ToJSON::to_json)
                .unwrap_or(Value::Null),
        )
    }
}

/// A JSON object (any members), declared `type: object`.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonObject(pub serde_json::Map<String, Value>);

wrapper_type!(
    impl for JsonObject,
    raw = Self,
    value = |o| o,
    name = "object".into(),
    schema = MetaSchemaRef::Inline(Box::new(poem_openapi::registry::MetaSchema::new("object")))
);

impl ParseFromJSON for JsonObject {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::Object(map)) => Ok(JsonObject(map)),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl ToJSON for JsonObject {
    fn to_json(&self) -> Option<Value> {
        Some(Value::Object(self.0.clone()))
    }
}

/// A task id: an integer or a string. (Hand-written schema: poem-openapi's `Union` marks
/// unions `type: object`, which an integer or a string is not.)
#[derive(Debug, Clone)]
pub enum TaskId {
    Int(i64),
    Text(Text),
}

wrapper_type!(
    impl for TaskId,
    raw = Self,
    value = |t| t,
    name = "TaskId".into(),
    // Inline: generators cannot wrap a reference to a non-object schema in allOf.
    schema = MetaSchemaRef::Inline(Box::new(poem_openapi::registry::MetaSchema {
        description: Some("A task id: an integer or a string (at most 128 characters)."),
        one_of: vec![
            i64::schema_ref(),
            MetaSchemaRef::Inline(Box::new(poem_openapi::registry::MetaSchema {
                max_length: Some(128),
                ..poem_openapi::registry::MetaSchema::new("string")
            })),
        ],
        ..poem_openapi::registry::MetaSchema::ANY
    }))
);

impl ParseFromJSON for TaskId {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::Number(n)) if n.is_i64() => Ok(TaskId::Int(n.as_i64().unwrap_or_default())),
            Some(Value::String(s)) => Ok(TaskId::Text(Text(s))),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl ToJSON for TaskId {
    fn to_json(&self) -> Option<Value> {
        Some(self.to_value())
    }
}

impl TaskId {
    pub fn to_value(&self) -> Value {
        match self {
            TaskId::Int(i) => Value::from(*i),
            TaskId::Text(s) => Value::from(s.0.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Characters from every class the patterns name: controls (C0, DEL, C1 — NEL is also
    /// whitespace), ASCII and Unicode whitespace, the intent alphabet, and others.
    fn text() -> impl Strategy<Value = String> {
        let chars = prop::sample::select(vec![
            '\x00', '\x09', '\x0A', '\x1F', '\x7F', '\u{80}', '\u{85}', '\u{9F}', ' ', '\u{A0}',
            '\u{2003}', '\u{3000}', 'a', 'Z', '0', '9', '_', '-', '.', 'é', '字', '🙂',
        ]);
        prop::collection::vec(chars, 0..70).prop_map(|v| v.into_iter().collect())
    }

    fn agree<R: Rule>(s: &str) -> Result<(), TestCaseError> {
        let re = regex::Regex::new(R::PATTERN).unwrap();
        prop_assert_eq!(R::matches(s), re.is_match(s), "{} {:?}", R::NAME, s);
        Ok(())
    }

    proptest! {
        #[test]
        fn each_rule_says_what_its_pattern_says(s in text()) {
            agree::<ConceptRule>(&s)?;
            agree::<IntentRule>(&s)?;
            agree::<QueryRule>(&s)?;
        }
    }

    #[test]
    fn the_rules_accept_and_refuse_what_the_spec_says() {
        assert!(ConceptRule::matches("light bulb"));
        assert!(!ConceptRule::matches("   "));
        assert!(!ConceptRule::matches("a\u{85}b"));
        assert!(IntentRule::matches("define_2-x"));
        assert!(!IntentRule::matches(&"a".repeat(65)));
        assert!(!IntentRule::matches(""));
        assert!(QueryRule::matches("  x "));
        assert!(!QueryRule::matches(" \u{3000}"));
    }
}
