//! The YAML layer of `inject`: splits a stream into documents (so untouched ones pass through
//! byte for byte, comments included), parses one document into a tree that remembers each
//! scalar's style, and writes a tree back in block style.
//!
//! Why not a serde YAML crate: Kubernetes reads YAML 1.1 (`yes`, `on`, `0644` mean bool and
//! octal there), and serde-based writers re-derive every scalar from its typed value, so a
//! quoted `"yes"` comes back bare and a `0644` comes back as `644`. Here a plain scalar is
//! written back exactly as it was read, so the API server sees what it would have seen in the
//! input. Parsing is `yaml-rust2`'s event parser (pure Rust, maintained, no serde).
//! Comments inside a rewritten document are lost (as with `kubectl` or `linkerd inject`);
//! its leading comment lines are kept.

use std::collections::HashMap;
use std::fmt::Write as _;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// How a scalar was written; plain scalars keep their exact text, which is their meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Unquoted: the text is kept verbatim (its type is resolved by the reader).
    Plain,
    /// `'…'`
    SingleQuoted,
    /// `"…"`
    DoubleQuoted,
    /// `|` or `>` block scalar (written back as `|`).
    Block,
}

/// A scalar: its content, how it was written, and its tag if it had one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scalar {
    /// The content (for plain scalars, the text as written).
    pub value: String,
    /// How it was written.
    pub style: Style,
    /// An explicit tag, as written (`!!str`, `!foo`, `!<…>`).
    pub tag: Option<String>,
}

impl Scalar {
    /// A plain scalar whose text is its meaning: numbers, booleans.
    pub fn plain(text: impl Into<String>) -> Self {
        Scalar {
            value: text.into(),
            style: Style::Plain,
            tag: None,
        }
    }

    /// A string: plain where that cannot be read as anything but this string, else quoted.
    pub fn string(text: impl Into<String>) -> Self {
        let value = text.into();
        let style = if is_plain_safe(&value) {
            Style::Plain
        } else {
            Style::DoubleQuoted
        };
        Scalar {
            value,
            style,
            tag: None,
        }
    }

    /// Whether this is a plain `true` (in any of the spellings YAML 1.1 readers accept).
    pub fn is_true(&self) -> bool {
        self.style == Style::Plain
            && matches!(
                self.value.as_str(),
                "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON"
            )
    }
}

/// A mapping; keys are scalars, order is kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Map(pub Vec<(Scalar, Node)>);

/// A YAML node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A scalar.
    Scalar(Scalar),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping.
    Map(Map),
}

impl Node {
    /// A string scalar node (see [`Scalar::string`]).
    pub fn string(text: impl Into<String>) -> Self {
        Node::Scalar(Scalar::string(text))
    }

    /// A plain scalar node (see [`Scalar::plain`]).
    pub fn plain(text: impl Into<String>) -> Self {
        Node::Scalar(Scalar::plain(text))
    }

    /// The scalar's content, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Scalar(s) => Some(&s.value),
            _ => None,
        }
    }

    /// The mapping, if this is one.
    pub fn as_map(&self) -> Option<&Map> {
        match self {
            Node::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The mapping, if this is one.
    pub fn as_map_mut(&mut self) -> Option<&mut Map> {
        match self {
            Node::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The sequence, if this is one.
    pub fn as_seq(&self) -> Option<&Vec<Node>> {
        match self {
            Node::Seq(s) => Some(s),
            _ => None,
        }
    }

    /// The sequence, if this is one.
    pub fn as_seq_mut(&mut self) -> Option<&mut Vec<Node>> {
        match self {
            Node::Seq(s) => Some(s),
            _ => None,
        }
    }

    /// Whether this is an empty plain scalar or `null`/`~` (an absent value).
    pub fn is_null(&self) -> bool {
        matches!(self, Node::Scalar(s) if s.style == Style::Plain
            && matches!(s.value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }
}

impl Map {
    /// Builds a mapping from string keys, in order.
    pub fn from_pairs<I: IntoIterator<Item = (&'static str, Node)>>(pairs: I) -> Self {
        Map(pairs
            .into_iter()
            .map(|(k, v)| (Scalar::string(k), v))
            .collect())
    }

    /// Index of `key`.
    pub fn position(&self, key: &str) -> Option<usize> {
        self.0.iter().position(|(k, _)| k.value == key)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.0.iter().find(|(k, _)| k.value == key).map(|(_, v)| v)
    }

    /// The value of `key`.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        self.0
            .iter_mut()
            .find(|(k, _)| k.value == key)
            .map(|(_, v)| v)
    }

    /// The string value of `key`, if it is a scalar.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Node::as_str)
    }

    /// Sets `key` to `value` in place, or appends it; returns the slot.
    pub fn set(&mut self, key: &str, value: Node) -> &mut Node {
        let i = match self.position(key) {
            Some(i) => {
                self.0[i].1 = value;
                i
            }
            None => {
                self.0.push((Scalar::string(key), value));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }

    /// Sets `key` unless its value already means `value` (see [`equiv`]), so the original
    /// spelling stays.
    pub fn ensure(&mut self, key: &str, value: Node) {
        if !self.get(key).is_some_and(|v| equiv(v, &value)) {
            self.set(key, value);
        }
    }

    /// Sets `key` only if absent.
    pub fn set_default(&mut self, key: &str, value: Node) {
        if self.get(key).is_none() {
            self.set(key, value);
        }
    }

    /// Inserts `key` at `index` (clamped), replacing nothing.
    pub fn insert_at(&mut self, index: usize, key: &str, value: Node) {
        let index = index.min(self.0.len());
        self.0.insert(index, (Scalar::string(key), value));
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Node> {
        self.position(key).map(|i| self.0.remove(i).1)
    }

    /// The mapping under `key`, created (or replacing a null) if missing; `None` when the
    /// value is something else than a mapping or null.
    pub fn map_entry(&mut self, key: &str) -> Option<&mut Map> {
        self.entry_or(key, || Node::Map(Map::default()))
            .as_map_mut()
    }

    /// The sequence under `key`, created (or replacing a null) if missing; `None` when the
    /// value is something else than a sequence or null.
    pub fn seq_entry(&mut self, key: &str) -> Option<&mut Vec<Node>> {
        self.entry_or(key, || Node::Seq(Vec::new())).as_seq_mut()
    }

    /// The value under `key`; `empty()` when it is missing or null.
    fn entry_or(&mut self, key: &str, empty: impl FnOnce() -> Node) -> &mut Node {
        match self.position(key) {
            Some(i) if self.0[i].1.is_null() => {
                self.0[i].1 = empty();
                &mut self.0[i].1
            }
            Some(i) => &mut self.0[i].1,
            None => self.set(key, empty()),
        }
    }
}

/// One document of a stream, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// 1-based line of the body's first line in the whole input.
    pub start_line: usize,
    /// The `---` line that opened it (without its line break), if any.
    pub separator: Option<&'a str>,
    /// Everything up to the next `---` line.
    pub body: &'a str,
}

impl Chunk<'_> {
    /// Whether the body holds nothing but blank lines.
    pub fn is_blank(&self) -> bool {
        self.body.trim().is_empty()
    }

    /// The comment and blank lines before the first content line.
    pub fn leading_comments(&self) -> &str {
        let mut end = 0;
        for line in self.body.split_inclusive('\n') {
            let t = line.trim_start();
            if !(t.is_empty() || t.starts_with('#')) {
                break;
            }
            end += line.len();
        }
        &self.body[..end]
    }
}

/// Splits a stream at its `---` lines. A document marker that is followed by content on
/// the same line (`--- |`) keeps the content in the body. Never fails: every line of the
/// input is in exactly one chunk's separator or body.
pub fn split_documents(input: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut start = 0; // byte offset of the current body
    let mut start_line = 1;
    let mut separator = None;
    let mut offset = 0;
    for (line_no, line) in (1..).zip(input.split_inclusive('\n')) {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_marker = bare.starts_with("---")
            && bare[3..]
                .chars()
                .next()
                .is_none_or(|c| c == ' ' || c == '\t');
        if is_marker {
            chunks.push(Chunk {
                start_line,
                separator,
                body: &input[start..offset],
            });
            let rest = bare[3..].trim_start();
            if rest.is_empty() || rest.starts_with('#') {
                separator = Some(bare);
                start = offset + line.len();
                start_line = line_no + 1;
            } else {
                // Content after the marker: the body starts right after "--- ".
                separator = Some("---");
                start = offset + (bare.len() - rest.len());
                start_line = line_no;
            }
        }
        offset += line.len();
    }
    chunks.push(Chunk {
        start_line,
        separator,
        body: &input[start..],
    });
    chunks
}

/// A parse error, with a 1-based line and column relative to the parsed text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What went wrong.
    pub message: String,
}

/// Parses one document; `Ok(None)` when the text holds none (blank, comments only).
pub fn parse_document(text: &str) -> Result<Option<Node>, ParseError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| ParseError {
        line: e.marker().line(),
        column: e.marker().col() + 1,
        message: e.info().to_string(),
    })?;
    if let Some(e) = builder.error {
        return Err(e);
    }
    match builder.docs.len() {
        0 => Ok(None),
        1 => Ok(builder.docs.pop()),
        _ => Err(ParseError {
            line: 1,
            column: 1,
            message: "several documents without a `---` line between them".into(),
        }),
    }
}

enum Frame {
    Seq(usize, Vec<Node>),
    Map(usize, Map, Option<Scalar>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    docs: Vec<Node>,
    error: Option<ParseError>,
}

impl Builder {
    fn fail(&mut self, mark: Marker, message: &str) {
        if self.error.is_none() {
            self.error = Some(ParseError {
                line: mark.line(),
                column: mark.col() + 1,
                message: message.to_string(),
            });
        }
    }

    fn push(&mut self, node: Node, anchor: usize, mark: Marker) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, map, key)) => match key.take() {
                Some(k) => map.0.push((k, node)),
                None => match node {
                    Node::Scalar(s) => *key = Some(s),
                    _ => self.fail(mark, "a mapping key that is not a scalar is not supported"),
                },
            },
        }
    }
}

fn tag_text(tag: Tag) -> String {
    match tag.handle.as_str() {
        "tag:yaml.org,2002:" => format!("!!{}", tag.suffix),
        "!" | "" => format!("!{}", tag.suffix.trim_start_matches('!')),
        h => format!("!<{h}{}>", tag.suffix),
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match ev {
            Event::Scalar(value, style, anchor, tag) => {
                let style = match style {
                    TScalarStyle::SingleQuoted => Style::SingleQuoted,
                    TScalarStyle::DoubleQuoted => Style::DoubleQuoted,
                    TScalarStyle::Literal | TScalarStyle::Folded => Style::Block,
                    _ => Style::Plain,
                };
                let node = Node::Scalar(Scalar {
                    value,
                    style,
                    tag: tag.map(tag_text),
                });
                self.push(node, anchor, mark);
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(node) => self.push(node, 0, mark),
                None => self.fail(mark, "alias to an unknown anchor"),
            },
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq(anchor, Vec::new())),
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map(anchor, Map::default(), None))
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq(anchor, items)) => self.push(Node::Seq(items), anchor, mark),
                Some(Frame::Map(anchor, map, _)) => self.push(Node::Map(map), anchor, mark),
                None => self.fail(mark, "unbalanced collection end"),
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

/// Whether two nodes mean the same to a Kubernetes reader: equal up to quoting, where a
/// plain scalar counts as a string only if it would be read as one.
pub fn equiv(a: &Node, b: &Node) -> bool {
    match (a, b) {
        (Node::Scalar(x), Node::Scalar(y)) => {
            x.value == y.value
                && x.tag == y.tag
                && ((x.style == Style::Plain) == (y.style == Style::Plain)
                    || plain_is_string(&x.value))
        }
        (Node::Seq(x), Node::Seq(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| equiv(a, b))
        }
        (Node::Map(x), Node::Map(y)) => {
            x.0.len() == y.0.len()
                && x.0
                    .iter()
                    .zip(&y.0)
                    .all(|((ka, a), (kb, b))| ka.value == kb.value && equiv(a, b))
        }
        _ => false,
    }
}

/// Whether a plain scalar with this text is read as a string by YAML 1.1 and 1.2 readers
/// (not null, a boolean or a number).
fn plain_is_string(v: &str) -> bool {
    let lower = v.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "" | "~" | "null" | "y" | "n" | "yes" | "no" | "true" | "false" | "on" | "off" | "=" | "<<"
    ) {
        return false;
    }
    let unsigned = lower.trim_start_matches(['+', '-']);
    let digits = unsigned.trim_start_matches('.');
    !(digits.starts_with(|c: char| c.is_ascii_digit())
        || unsigned.starts_with(".inf")
        || unsigned.starts_with(".nan"))
}

/// Whether `s` written bare can only be read back as this same string, by YAML 1.1 and 1.2
/// readers alike, in block context. Deliberately conservative: anything that starts like a
/// number, a special word or an indicator gets quoted.
pub fn is_plain_safe(s: &str) -> bool {
    if is_quantity_like(s) {
        return true;
    }
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    let dash_ok = first == '-'
        && chars
            .next()
            .is_some_and(|c| c == '-' || c.is_ascii_alphabetic());
    if !(first.is_ascii_alphabetic() || first == '/' || first == '_' || dash_ok) {
        return false;
    }
    if s.ends_with([' ', ':']) || s.contains(": ") || s.contains(" #") {
        return false;
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || " -_./:=@+,".contains(c))
    {
        return false;
    }
    let lower = s.to_ascii_lowercase();
    !matches!(
        lower.as_str(),
        "y" | "n" | "yes" | "no" | "true" | "false" | "on" | "off" | "null"
    )
}

/// Digits then letters (`10m`, `64Mi`): no YAML reader takes that for a number (exponents
/// and hex/octal/binary prefixes need digits after the letter).
fn is_quantity_like(s: &str) -> bool {
    let letters = s.trim_start_matches(|c: char| c.is_ascii_digit());
    letters.len() < s.len()
        && !letters.is_empty()
        && letters.chars().all(|c| c.is_ascii_alphabetic())
}

/// Writes a document in block style: two-space indentation, sequences under a key at the
/// key's indentation (as `kubectl` writes them), plain scalars verbatim.
pub fn emit(root: &Node) -> String {
    let mut out = String::new();
    match root {
        Node::Scalar(s) => {
            write_scalar(&mut out, s, 2);
            out.push('\n');
        }
        Node::Map(m) if m.0.is_empty() => out.push_str("{}\n"),
        Node::Seq(v) if v.is_empty() => out.push_str("[]\n"),
        Node::Map(m) => write_map(&mut out, m, 0, false),
        Node::Seq(v) => write_seq(&mut out, v, 0, false),
    }
    out
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn write_map(out: &mut String, m: &Map, indent: usize, inline_first: bool) {
    for (i, (k, v)) in m.0.iter().enumerate() {
        if !(inline_first && i == 0) {
            pad(out, indent);
        }
        write_key(out, k);
        out.push(':');
        match v {
            Node::Map(m) if !m.0.is_empty() => {
                out.push('\n');
                write_map(out, m, indent + 2, false);
            }
            Node::Seq(s) if !s.is_empty() => {
                out.push('\n');
                write_seq(out, s, indent, false);
            }
            _ => write_on_this_line(out, v, indent),
        }
    }
}

fn write_seq(out: &mut String, items: &[Node], indent: usize, inline_first: bool) {
    for (i, item) in items.iter().enumerate() {
        if !(inline_first && i == 0) {
            pad(out, indent);
        }
        out.push('-');
        match item {
            Node::Map(m) if !m.0.is_empty() => {
                out.push(' ');
                write_map(out, m, indent + 2, true);
            }
            Node::Seq(s) if !s.is_empty() => {
                out.push(' ');
                write_seq(out, s, indent + 2, true);
            }
            _ => write_on_this_line(out, item, indent),
        }
    }
}

/// Finishes a `key:` or `-` line with a value that fits on it: a scalar (nothing for a
/// plain empty one, as `key:` means null) or an empty collection (`{}`, `[]`).
fn write_on_this_line(out: &mut String, v: &Node, indent: usize) {
    match v {
        Node::Scalar(s) => {
            if !(s.style == Style::Plain && s.value.is_empty() && s.tag.is_none()) {
                out.push(' ');
                write_scalar(out, s, indent + 2);
            }
            out.push('\n');
        }
        Node::Map(_) => out.push_str(" {}\n"),
        Node::Seq(_) => out.push_str(" []\n"),
    }
}

fn write_key(out: &mut String, k: &Scalar) {
    if let Some(tag) = &k.tag {
        out.push_str(tag);
        out.push(' ');
    }
    match k.style {
        Style::Plain if plain_keeps(&k.value) => out.push_str(&k.value),
        _ if is_plain_safe(&k.value) => out.push_str(&k.value),
        Style::SingleQuoted if single_quotable(&k.value) => write_single(out, &k.value),
        _ => write_double(out, &k.value),
    }
}

/// A plain scalar read from the input can go back verbatim unless folding made it
/// multi-line.
fn plain_keeps(v: &str) -> bool {
    !v.contains('\n') && v.trim() == v
}

fn single_quotable(v: &str) -> bool {
    !v.chars()
        .any(|c| c.is_control() || matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}'))
}

/// Block literal is possible when every line is printable and the first one fixes the
/// indentation (does not start with a space).
fn literal_ok(v: &str) -> bool {
    let body = v.trim_end_matches('\n');
    !body.is_empty()
        && !body.starts_with([' ', '\t', '\n'])
        && !v.chars().any(|c| {
            (c.is_control() && c != '\n' && c != '\t')
                || matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}')
        })
}

fn write_scalar(out: &mut String, s: &Scalar, content_indent: usize) {
    if let Some(tag) = &s.tag {
        out.push_str(tag);
        if !(s.style == Style::Plain && s.value.is_empty()) {
            out.push(' ');
        }
    }
    match s.style {
        Style::Plain if plain_keeps(&s.value) => out.push_str(&s.value),
        Style::Block if literal_ok(&s.value) => write_literal(out, &s.value, content_indent),
        _ if is_plain_safe(&s.value) => out.push_str(&s.value),
        Style::SingleQuoted if single_quotable(&s.value) => write_single(out, &s.value),
        _ if s.value.contains('\n') && literal_ok(&s.value) && s.style != Style::DoubleQuoted => {
            write_literal(out, &s.value, content_indent)
        }
        _ => write_double(out, &s.value),
    }
}

fn write_literal(out: &mut String, v: &str, indent: usize) {
    let body = v.trim_end_matches('\n');
    let trailing = v.len() - body.len();
    out.push_str(match trailing {
        0 => "|-",
        1 => "|",
        _ => "|+",
    });
    for line in body.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            pad(out, indent);
            out.push_str(line);
        }
    }
    for _ in 1..trailing {
        out.push('\n');
    }
}

fn write_single(out: &mut String, v: &str) {
    out.push('\'');
    out.push_str(&v.replace('\'', "''"));
    out.push('\'');
}

fn write_double(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(text: &str) -> String {
        emit(&parse_document(text).expect("parses").expect("a document"))
    }

    #[test]
    fn plain_scalars_keep_their_yaml_1_1_meaning() {
        let text = "a: 0644\nb: yes\nc: 1_000\nd: 1.50\ne: ~\nf:\ng: 2024-01-01\nh: on\n";
        assert_eq!(roundtrip(text), text);
    }

    #[test]
    fn quoted_scalars_stay_strings() {
        let out =
            roundtrip("a: \"yes\"\nb: '0644'\nc: \"web\"\nd: 'it''s'\ne: \"\"\nf: \"x\\ty\"\n");
        assert_eq!(
            out,
            "a: \"yes\"\nb: '0644'\nc: web\nd: 'it''s'\ne: \"\"\nf: \"x\\ty\"\n"
        );
    }

    #[test]
    fn block_scalars_round_trip_with_chomping() {
        let text = "a: |\n  #!/bin/sh\n  echo hi\n\n  done\nb: |-\n  x\nc: |+\n  y\n\nd: x\n";
        assert_eq!(roundtrip(text), text);
        let folded = roundtrip("a: >\n  one\n  two\n");
        assert_eq!(folded, "a: |\n  one two\n");
    }

    #[test]
    fn sequences_follow_kubectl_layout() {
        let out = roundtrip(
            "spec:\n  containers:\n    - name: a\n      args: [x, \"y z\"]\n    - {}\n  l: []\n",
        );
        assert_eq!(
            out,
            "spec:\n  containers:\n  - name: a\n    args:\n    - x\n    - y z\n  - {}\n  l: []\n"
        );
        assert_eq!(roundtrip("- - a\n  - b\n- c\n"), "- - a\n  - b\n- c\n");
    }

    #[test]
    fn json_input_comes_out_as_plain_yaml() {
        let out = roundtrip(r#"{"kind": "Pod", "num": 1, "s": "8080", "t": true, "n": "n"}"#);
        assert_eq!(
            out,
            "kind: Pod\nnum: 1\ns: \"8080\"\nt: true\n\"n\": \"n\"\n"
        );
    }

    #[test]
    fn aliases_are_expanded_and_merge_keys_kept() {
        let out = roundtrip("base: &b\n  x: 1\nuse:\n  <<: *b\n  y: 2\n");
        assert_eq!(out, "base:\n  x: 1\nuse:\n  <<:\n    x: 1\n  y: 2\n");
    }

    #[test]
    fn tags_are_kept() {
        assert_eq!(
            roundtrip("a: !!str 123\nb: !custom x\n"),
            "a: !!str 123\nb: !custom x\n"
        );
    }

    #[test]
    fn plain_safety_is_conservative() {
        for s in [
            "web",
            "/run/vitals/agent.sock",
            "--expect=model",
            "Always",
            "vitals-agent:0.1.0",
            "10m",
            "64Mi",
        ] {
            assert!(is_plain_safe(s), "{s}");
        }
        for s in [
            "", "yes", "No", "ON", "0660", "1e3", "8080", ".inf", "~", "a: b", "a #b", "x:", "*a",
            "- x", "-1", "-", "-.5", "0x1F", "12:30",
        ] {
            assert!(!is_plain_safe(s), "{s}");
        }
    }

    #[test]
    fn emitted_strings_parse_back_identically() {
        let cases = [
            "plain",
            "two words",
            "yes",
            "0660",
            "",
            " lead",
            "trail ",
            "a\nb",
            "a\nb\n",
            "a\n\n",
            "\tx",
            "q\"uote'",
            "back\\slash",
            "uni ✓ code",
            "\u{7}bell",
            "#x",
            "a: b",
        ];
        for v in cases {
            let mut m = Map::default();
            m.set("k", Node::Scalar(Scalar::string(v)));
            let mut block = Map::default();
            block.set(
                "k",
                Node::Scalar(Scalar {
                    value: v.into(),
                    style: Style::Block,
                    tag: None,
                }),
            );
            for node in [Node::Map(m), Node::Map(block)] {
                let text = emit(&node);
                let back = parse_document(&text).expect("parses").expect("doc");
                let got = back
                    .as_map()
                    .and_then(|m| m.get_str("k"))
                    .map(str::to_string);
                assert_eq!(got.as_deref(), Some(v), "{text:?}");
            }
        }
    }

    #[test]
    fn split_keeps_every_byte() {
        let input = "# head\n---\na: 1\n--- # two\nb: 2\n---\n---   \nc: |\n  ---x\n";
        let chunks = split_documents(input);
        let seps: Vec<_> = chunks.iter().map(|c| c.separator).collect();
        assert_eq!(
            seps,
            [
                None,
                Some("---"),
                Some("--- # two"),
                Some("---"),
                Some("---   ")
            ]
        );
        assert_eq!(chunks[2].body, "b: 2\n");
        assert_eq!(chunks[2].start_line, 5);
        assert!(chunks[3].is_blank());
        let inline = split_documents("--- |\n  text\n");
        assert_eq!(inline[1].body, "|\n  text\n");
        assert_eq!(inline[1].separator, Some("---"));
    }

    #[test]
    fn errors_have_positions() {
        let e = parse_document("a: 1\nb: [\n").expect_err("unclosed flow sequence");
        assert!(e.line >= 2, "{e:?}");
        let e = parse_document("? [a]\n: 1\n").expect_err("complex key");
        assert!(e.message.contains("not a scalar"), "{e:?}");
    }
}
