//! A YAML document as a tree whose every node and key knows its line and column.
//!
//! Parsing goes through `serde-saphyr` (which rejects duplicate keys and reports positions);
//! we deserialize into [`Node`] by way of its `Spanned` wrapper, so that validation errors
//! found later (unknown param, bad type, missing stage) can still point into the file.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::fmt;

/// A position in a source file, 1-based. `line == 0` means unknown (e.g. from `--set`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

impl<T> From<&Spanned<T>> for Pos {
    fn from(s: &Spanned<T>) -> Self {
        Pos {
            line: s.referenced.line(),
            column: s.referenced.column(),
        }
    }
}

/// A YAML value with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

/// A mapping key with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

/// The value of a [`Node`]. Mappings keep their source order.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

impl Node {
    pub fn new(value: Value, pos: Pos) -> Self {
        Node { value, pos }
    }

    /// The entry `name` of a mapping.
    pub fn get(&self, name: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(m) => m.iter().find(|(k, _)| k.name == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The key of entry `name` of a mapping.
    pub fn key(&self, name: &str) -> Option<&Key> {
        match &self.value {
            Value::Map(m) => m.iter().find(|(k, _)| k.name == name).map(|(k, _)| k),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A short name of the node's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// Converts to JSON (positions dropped). Mapping order becomes sorted order.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or(J::Null),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(v) => J::Array(v.iter().map(Node::to_json).collect()),
            Value::Map(m) => J::Object(
                m.iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Follows a JSON-pointer-like path of map keys and list indices; returns the deepest node
    /// reached, so an error about a nested field points as close to it as the file allows.
    pub fn locate<'a>(&'a self, path: &[String]) -> &'a Node {
        let mut node = self;
        for seg in path {
            let next = match &node.value {
                Value::Map(m) => m.iter().find(|(k, _)| &k.name == seg).map(|(_, v)| v),
                Value::Seq(v) => seg.parse::<usize>().ok().and_then(|i| v.get(i)),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node
    }

    /// Applies `f` to every string scalar, in place.
    pub fn map_strings<E>(
        &mut self,
        f: &mut dyn FnMut(&str, Pos) -> Result<Value, E>,
    ) -> Result<(), E> {
        match &mut self.value {
            Value::Str(s) => {
                let v = f(s, self.pos)?;
                self.value = v;
            }
            Value::Seq(v) => {
                for n in v {
                    n.map_strings(f)?;
                }
            }
            Value::Map(m) => {
                for (_, n) in m {
                    n.map_strings(f)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// A plain scalar typed by the YAML 1.2 core schema: `true`/`false`, integers, floats;
/// anything else stays a string.
pub fn typed_scalar(s: &str) -> Value {
    match s {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::Int(i);
    }
    let numeric = s
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && s.chars().any(|c| c.is_ascii_digit());
    match s.parse::<f64>() {
        Ok(f) if numeric => Value::Float(f),
        _ => Value::Str(s.to_string()),
    }
}

/// A YAML syntax error (or a duplicate key) with its position when known.
#[derive(Debug, Clone)]
pub struct ParseError {
    pub pos: Option<Pos>,
    pub message: String,
}

/// Parses a YAML document with YAML 1.2 core typing (`yes`, `no`, `n` stay strings) and
/// duplicate keys rejected.
pub fn parse(text: &str) -> Result<Node, ParseError> {
    if text.trim().is_empty() {
        return Ok(Node::new(
            Value::Map(Vec::new()),
            Pos { line: 1, column: 1 },
        ));
    }
    let options = serde_saphyr::options! {
        strict_booleans: true,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        with_snippet: false,
    };
    let spanned: Spanned<Value> =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| ParseError {
            pos: e.location().map(|l| Pos {
                line: l.line(),
                column: l.column(),
            }),
            message: user_words(&e),
        })?;
    let pos = Pos::from(&spanned);
    Ok(Node::new(spanned.value, pos))
}

/// A YAML error in the user's words, not the parser's (its messages name its own options).
fn user_words(e: &serde_saphyr::Error) -> String {
    match e {
        serde_saphyr::Error::DuplicateMappingKey { key: Some(k), .. } => {
            format!("duplicate key `{k}`: it appears twice in the same mapping; keep one")
        }
        serde_saphyr::Error::DuplicateMappingKey { key: None, .. } => {
            "duplicate key: one appears twice in the same mapping; keep one".to_string()
        }
        serde_saphyr::Error::MultipleDocuments { .. } => {
            "the file holds more than one YAML document (a `---` line after the first); a \
             pipeline file is one document"
                .to_string()
        }
        other => {
            let m = other.to_string();
            // Keep the parser's words, without its location (ours is in front).
            match m.find(" at line ") {
                Some(i) => m[..i].to_string(),
                None => m,
            }
        }
    }
}

/// Parses a single scalar given on the command line (`--set a.b=VALUE`) with YAML typing.
pub fn parse_scalar(text: &str) -> Node {
    match parse(text) {
        Ok(mut n) => {
            n.pos = Pos::default();
            n
        }
        Err(_) => Node::new(Value::Str(text.to_string()), Pos::default()),
    }
}

struct SpannedNode(Node);

impl<'de> Deserialize<'de> for SpannedNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<Value>::deserialize(d)?;
        let pos = Pos::from(&s);
        Ok(SpannedNode(Node::new(s.value, pos)))
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .or(Ok(Value::Float(v as f64)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(SpannedNode(n)) = seq.next_element()? {
            out.push(n);
        }
        Ok(Value::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out: Vec<(Key, Node)> = Vec::new();
        while let Some(k) = map.next_key::<Spanned<KeyText>>()? {
            let pos = Pos::from(&k);
            let SpannedNode(v) = map.next_value()?;
            out.push((
                Key {
                    name: k.value.0,
                    pos,
                },
                v,
            ));
        }
        Ok(Value::Map(out))
    }
}

/// A mapping key as text, whatever its scalar type (`1: x` gives key "1").
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Keys are names: read them as text, never as `false` or `1.0`.
        String::deserialize(d).map(KeyText)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_keys_and_values() {
        let doc = "name: x\nstages:\n  a:\n    plugin: p\n    params: {k: 1}\n";
        let n = parse(doc).unwrap();
        let stages = n.get("stages").unwrap();
        let a_key = stages.key("a").unwrap();
        assert_eq!((a_key.pos.line, a_key.pos.column), (3, 3));
        let plugin = stages.get("a").unwrap().get("plugin").unwrap();
        assert_eq!(plugin.as_str(), Some("p"));
        assert_eq!((plugin.pos.line, plugin.pos.column), (4, 13));
        let k = stages
            .get("a")
            .unwrap()
            .get("params")
            .unwrap()
            .get("k")
            .unwrap();
        assert_eq!(k.value, Value::Int(1));
        assert_eq!(k.pos.line, 5);
    }

    #[test]
    fn duplicate_keys_are_rejected_with_position() {
        let err = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert!(err.message.to_lowercase().contains("duplicate"), "{err:?}");
        assert_eq!(err.pos.map(|p| p.line), Some(3), "{err:?}");
    }

    #[test]
    fn yaml_1_2_typing_for_keys_and_values() {
        let n = parse("n: no\ny: on\n1: x\n").unwrap();
        assert_eq!(n.get("n").unwrap().as_str(), Some("no"));
        assert_eq!(n.get("y").unwrap().as_str(), Some("on"));
        assert!(n.get("1").is_some());
    }

    #[test]
    fn scalar_typing() {
        assert_eq!(parse_scalar("12").value, Value::Int(12));
        assert_eq!(parse_scalar("0.5").value, Value::Float(0.5));
        assert_eq!(parse_scalar("true").value, Value::Bool(true));
        assert_eq!(parse_scalar("abc").value, Value::Str("abc".into()));
    }
}
