//! A YAML value as JSON, by yaml-rust2's own reading (independent of the webhook's tree):
//! shared by the webhook tests and the webhook bench (`#[path]`-included there).

use serde_json::{json, Value};
use yaml_rust2::Yaml;

/// `y` as JSON; a key that is not a string is named by its debug form.
pub fn yaml_to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Real(s) => json!(s.parse::<f64>().expect("real")),
        Yaml::Integer(i) => json!(i),
        Yaml::String(s) => json!(s),
        Yaml::Boolean(b) => json!(b),
        Yaml::Null => Value::Null,
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        other => format!("{other:?}"),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        other => panic!("unexpected YAML node {other:?}"),
    }
}
