//! The webhook's bridge to `inject`: a Pod's JSON to inject's YAML tree and back (JSON scalars
//! keep their JSON types both ways), and the RFC 6902 JSON Patch from one JSON value to another.
//!
//! The diff is our own (about sixty lines) rather than the `json-patch` crate's: that one
//! pairs array elements by index, so the agent inserted at `initContainers[0]` would come out
//! as a `replace` of every init container plus an `add` at the end; here lists of named items
//! are paired by name (and other lists keep their common prefix and suffix), so it is one
//! `add` at `/spec/initContainers/0`, even when the init container after it changed too. The
//! tests apply our patches with the `json-patch` crate, an independent implementation.

use serde_json::{Map as JsonMap, Number, Value};

use super::super::yaml::{Map, Node, Scalar, Style};

/// The tree `inject` works on, built from a JSON value: strings become double-quoted scalars
/// (so `"true"` or `"8080"` stay strings), numbers, booleans and null plain ones.
pub(crate) fn to_tree(value: &Value) -> Node {
    match value {
        Value::Null => Node::plain("null"),
        Value::Bool(b) => Node::plain(b.to_string()),
        Value::Number(n) => Node::plain(n.to_string()),
        Value::String(s) => Node::Scalar(Scalar {
            value: s.clone(),
            style: Style::DoubleQuoted,
            tag: None,
        }),
        Value::Array(items) => Node::Seq(items.iter().map(to_tree).collect()),
        Value::Object(fields) => Node::Map(object_to_tree(fields)),
    }
}

/// [`to_tree`] of a JSON object: a mapping.
pub(crate) fn object_to_tree(fields: &JsonMap<String, Value>) -> Map {
    Map(fields
        .iter()
        .map(|(k, v)| (Scalar::string(k.as_str()), to_tree(v)))
        .collect())
}

/// The JSON value of a tree: quoted and block scalars are strings; a plain scalar is null,
/// a boolean or a number when the YAML core schema reads it so (what `inject` writes as plain:
/// ports, periods, `true`), else a string (`64Mi`, `vitals-agent:0.1.0`).
pub(crate) fn to_json(node: &Node) -> Value {
    match node {
        Node::Scalar(s) if s.style == Style::Plain => plain_to_json(&s.value),
        Node::Scalar(s) => Value::String(s.value.clone()),
        Node::Seq(items) => Value::Array(items.iter().map(to_json).collect()),
        Node::Map(m) => Value::Object(
            m.0.iter()
                .map(|(k, v)| (k.value.clone(), to_json(v)))
                .collect::<JsonMap<_, _>>(),
        ),
    }
}

fn plain_to_json(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Ok(u) = text.parse::<u64>() {
        return Value::Number(u.into());
    }
    // Only JSON-shaped decimals: Rust's float parser also takes `inf`, `NaN`, `1.`, `.5`.
    let json_like = text
        .trim_start_matches('-')
        .starts_with(|c: char| c.is_ascii_digit())
        && text.ends_with(|c: char| c.is_ascii_digit());
    if json_like {
        if let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(text.to_string())
}

/// The RFC 6902 operations that turn `from` into `to` (`add`, `remove`, `replace` only), in
/// an order that applies cleanly: removals from an array go from its end.
pub(crate) fn diff(from: &Value, to: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    diff_at(&mut String::new(), from, to, &mut ops);
    ops
}

fn diff_at(path: &mut String, from: &Value, to: &Value, ops: &mut Vec<Value>) {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, old) in a {
                let len = push(path, key);
                match b.get(key) {
                    Some(new) => diff_at(path, old, new, ops),
                    None => ops.push(op("remove", path, None)),
                }
                path.truncate(len);
            }
            for (key, new) in b.iter().filter(|(k, _)| !a.contains_key(*k)) {
                let len = push(path, key);
                ops.push(op("add", path, Some(new)));
                path.truncate(len);
            }
        }
        (Value::Array(a), Value::Array(b)) => diff_array(path, a, b, ops),
        _ if from == to => {}
        _ => ops.push(op("replace", path, Some(to))),
    }
}

/// Lists of named items are paired by name ([`diff_named`]); others keep the common prefix
/// and suffix, pair the middles by index (recursing), then remove what `from` has left over
/// (from the end, so indices stay valid) or add what `to` has.
fn diff_array(path: &mut String, a: &[Value], b: &[Value], ops: &mut Vec<Value>) {
    if diff_named(path, a, b, ops) {
        return;
    }
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (mid_a, mid_b) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let paired = mid_a.len().min(mid_b.len());
    for i in 0..paired {
        let len = push(path, &(prefix + i).to_string());
        diff_at(path, &mid_a[i], &mid_b[i], ops);
        path.truncate(len);
    }
    for i in (paired..mid_a.len()).rev() {
        let len = push(path, &(prefix + i).to_string());
        ops.push(op("remove", path, None));
        path.truncate(len);
    }
    for (i, new) in mid_b.iter().enumerate().skip(paired) {
        let len = push(path, &(prefix + i).to_string());
        ops.push(op("add", path, Some(new)));
        path.truncate(len);
    }
}

/// Lists whose items all have a distinct `name` (containers, env, volumes), where the names
/// both lists have come in the same order: items are paired by name (recursing), the ones
/// `to` lacks removed (from the end), the new ones added where `to` has them. So the agent
/// put in front of an init container that changed too (a mesh's, its exclusions merged) is
/// one `add`, not that container rewritten into the agent and added again after it. `false`
/// (nothing written) for any other list.
fn diff_named(path: &mut String, a: &[Value], b: &[Value], ops: &mut Vec<Value>) -> bool {
    fn names(list: &[Value]) -> Option<Vec<&str>> {
        let names: Vec<&str> = list
            .iter()
            .map(|v| v.get("name").and_then(Value::as_str))
            .collect::<Option<_>>()?;
        let distinct: std::collections::BTreeSet<&str> = names.iter().copied().collect();
        (distinct.len() == names.len()).then_some(names)
    }
    let (Some(from), Some(to)) = (names(a), names(b)) else {
        return false;
    };
    let kept: Vec<usize> = (0..a.len()).filter(|&i| to.contains(&from[i])).collect();
    let kept_in_to: Vec<&str> = to.iter().copied().filter(|n| from.contains(n)).collect();
    if !kept.iter().map(|&i| from[i]).eq(kept_in_to.iter().copied()) {
        return false;
    }
    for i in (0..a.len()).rev().filter(|i| !kept.contains(i)) {
        let len = push(path, &i.to_string());
        ops.push(op("remove", path, None));
        path.truncate(len);
    }
    let mut next = kept.iter().peekable();
    for (j, new) in b.iter().enumerate() {
        let len = push(path, &j.to_string());
        match next.next_if(|&&i| from[i] == to[j]) {
            Some(&i) => diff_at(path, &a[i], new, ops),
            None => ops.push(op("add", path, Some(new))),
        }
        path.truncate(len);
    }
    true
}

/// Appends one JSON Pointer token (RFC 6901: `~` as `~0`, `/` as `~1`); returns the length
/// to truncate back to.
fn push(path: &mut String, token: &str) -> usize {
    let len = path.len();
    path.push('/');
    path.push_str(&token.replace('~', "~0").replace('/', "~1"));
    len
}

fn op(name: &str, path: &str, value: Option<&Value>) -> Value {
    let mut o = JsonMap::new();
    o.insert("op".into(), Value::String(name.into()));
    o.insert("path".into(), Value::String(path.into()));
    if let Some(v) = value {
        o.insert("value".into(), v.clone());
    }
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn scalars_keep_their_json_types_through_the_tree() {
        let v = json!({"a": "true", "b": true, "c": "8080", "d": 8080, "e": null, "f": "",
            "g": 1.5, "h": -3, "i": "64Mi", "j": ["x", 1], "k": {"l/m~n": "o"}, "p": 18446744073709551615u64});
        assert_eq!(to_json(&to_tree(&v)), v);
    }

    #[test]
    fn plain_scalars_written_by_inject_read_as_yaml_would() {
        for (text, want) in [
            ("9180", json!(9180)),
            ("true", json!(true)),
            ("false", json!(false)),
            ("null", Value::Null),
            ("0.5", json!(0.5)),
            ("64Mi", json!("64Mi")),
            ("vitals-agent:0.1.0", json!("vitals-agent:0.1.0")),
            ("inf", json!("inf")),
            ("1.", json!("1.")),
            ("/run/vitals", json!("/run/vitals")),
        ] {
            assert_eq!(plain_to_json(text), want, "{text}");
        }
    }

    #[test]
    fn equal_values_give_an_empty_patch() {
        let v = json!({"spec": {"containers": [{"name": "a"}]}});
        assert!(diff(&v, &v).is_empty());
    }

    #[test]
    fn an_insert_at_the_front_of_a_list_is_one_add() {
        let a = json!({"l": [{"n": 1}, {"n": 2}]});
        let b = json!({"l": [{"n": 0}, {"n": 1}, {"n": 2}]});
        assert_eq!(
            diff(&a, &b),
            vec![json!({"op": "add", "path": "/l/0", "value": {"n": 0}})]
        );
    }

    #[test]
    fn named_items_are_paired_by_name() {
        let a = json!([{"name": "istio-init", "args": ["-d", "15020"]}, {"name": "gone"}]);
        let b =
            json!([{"name": "vitals-agent"}, {"name": "istio-init", "args": ["-d", "15020,9180"]}]);
        assert_eq!(
            diff(&a, &b),
            vec![
                json!({"op": "remove", "path": "/1"}),
                json!({"op": "add", "path": "/0", "value": {"name": "vitals-agent"}}),
                json!({"op": "replace", "path": "/1/args/1", "value": "15020,9180"}),
            ]
        );
        // Names that swap places, or repeat, are paired by index as before.
        let swapped = json!([{"name": "b"}, {"name": "a"}]);
        assert_eq!(
            diff(&json!([{"name": "a"}, {"name": "b"}]), &swapped).len(),
            2
        );
    }

    #[test]
    fn keys_are_escaped_and_changes_are_minimal() {
        let a = json!({"metadata": {"annotations": {"x": "1"}}, "gone": 1, "n": 1});
        let b = json!({"metadata": {"annotations": {"x": "1", "vitals.dev/workers": "w"}}, "n": 2, "a~b": []});
        assert_eq!(
            diff(&a, &b),
            vec![
                json!({"op": "remove", "path": "/gone"}),
                json!({"op": "add", "path": "/metadata/annotations/vitals.dev~1workers", "value": "w"}),
                json!({"op": "replace", "path": "/n", "value": 2}),
                json!({"op": "add", "path": "/a~0b", "value": []}),
            ]
        );
    }

    #[test]
    fn removals_from_a_list_go_from_its_end() {
        let a = json!([1, 2, 3, 4]);
        let b = json!([1, 4]);
        assert_eq!(
            diff(&a, &b),
            vec![
                json!({"op": "remove", "path": "/2"}),
                json!({"op": "remove", "path": "/1"})
            ]
        );
        let c = json!([9, 2, 7]);
        assert_eq!(
            diff(&json!([1, 2]), &c),
            vec![
                json!({"op": "replace", "path": "/0", "value": 9}),
                json!({"op": "add", "path": "/2", "value": 7}),
            ]
        );
    }

    #[test]
    fn a_changed_type_is_replaced() {
        assert_eq!(
            diff(&json!({"a": [1]}), &json!({"a": {"b": 1}})),
            vec![json!({"op": "replace", "path": "/a", "value": {"b": 1}})]
        );
        assert_eq!(
            diff(&json!(1), &json!("1")),
            vec![json!({"op": "replace", "path": "", "value": "1"})]
        );
    }
}
