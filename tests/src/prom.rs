//! The one Prometheus text-format (0.0.4) reader of the tests: one sample by metric name and
//! exact label set, in any label order, with escaped label values and an optional timestamp.
//!
//! It only reads samples; whether a page is valid exposition text is promtool's job
//! ([`promtool_check`]).

use std::io::Write;
use std::process::{Command, Stdio};

/// One sample line: `name{labels} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name (`vitals_worker_hangs_total`, `..._bucket`).
    pub name: String,
    /// The labels in the order written, values unescaped.
    pub labels: Labels,
    /// The value (`+Inf`, `-Inf` and `NaN` included).
    pub value: f64,
}

impl Sample {
    /// Whether this sample is `name` with exactly the label set `labels`, in any order.
    pub fn is(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name == name
            && self.labels.len() == labels.len()
            && labels
                .iter()
                .all(|(k, v)| self.labels.iter().any(|(gk, gv)| gk == k && gv == v))
    }
}

/// Every sample of `text`; comments, blank lines and lines that are not samples are passed
/// over.
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| parse_sample(l).ok())
        .collect()
}

/// The value of the sample `name` with exactly the label set `labels` (`&[]` for none).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text)
        .into_iter()
        .find(|s| s.is(name, labels))
        .map(|s| s.value)
}

/// The value of a series written as the exposition writes it: `name{a="b",c="d"}` (label
/// order does not matter).
///
/// # Panics
/// When `series` is not a metric name with an optional label set: a mistake in the test.
pub fn series(text: &str, series: &str) -> Option<f64> {
    let (name, labels, rest) =
        parse_series(series).unwrap_or_else(|e| panic!("{series:?} is not a series ({e})"));
    assert!(rest.trim().is_empty(), "{series:?} is not a series");
    let labels: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    metric(text, &name, &labels)
}

/// Runs `promtool check metrics` on `text` and returns what it said (empty when the page is
/// valid and lint-clean) and whether it passed.
///
/// # Panics
/// When promtool cannot be started: the tests that call this need it (`make deps`).
pub fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("this test needs promtool, and it could not be started ({e}): run `make deps`")
        });
    child
        .stdin
        .take()
        .expect("promtool's stdin is piped")
        .write_all(text.as_bytes())
        .expect("promtool reads the page");
    let out = child.wait_with_output().expect("promtool runs to its end");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

/// Parses one sample line.
pub fn parse_sample(line: &str) -> Result<Sample, String> {
    let (name, labels, rest) = parse_series(line)?;
    let value = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| format!("no value in {line:?}"))?;
    let value = value
        .parse()
        .map_err(|_| format!("bad value {value:?} in {line:?}"))?;
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// Label names and values, in the order written.
type Labels = Vec<(String, String)>;

/// `name{labels}` at the start of `s`, and what follows it.
fn parse_series(s: &str) -> Result<(String, Labels, &str), String> {
    let s = s.trim_start();
    let name_end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(s.len());
    if name_end == 0 {
        return Err("no metric name".into());
    }
    let (name, mut rest) = s.split_at(name_end);
    let mut labels = Vec::new();
    if let Some(after) = rest.trim_start().strip_prefix('{') {
        rest = after;
        loop {
            rest = rest.trim_start().trim_start_matches(',').trim_start();
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest
                .split_once('=')
                .ok_or_else(|| format!("label without '=' at {rest:?}"))?;
            let after = after
                .trim_start()
                .strip_prefix('"')
                .ok_or_else(|| format!("label {key:?} without a quoted value"))?;
            let (value, after) = unescape_until_quote(after)
                .ok_or_else(|| format!("label {key:?}: value never ends"))?;
            labels.push((key.trim().to_owned(), value));
            rest = after;
        }
    }
    Ok((name.to_owned(), labels, rest))
}

/// The text up to the closing `"` with `\\`, `\"` and `\n` unescaped, and what follows it.
fn unescape_until_quote(s: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => value.push(match chars.next()?.1 {
                'n' => '\n',
                other => other,
            }),
            '"' => return Some((value, &s[i + 1..])),
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP vitals_worker_ready x\n# TYPE vitals_worker_ready gauge\n\
        vitals_worker_ready{worker=\"model\"} 1\n\
        vitals_worker_hangs_total{reason=\"loop_stalled\",worker=\"model\"} 2\n\
        vitals_up 3.5\n\
        \n\
        odd{path=\"/a \\\"b\\\" {c}\\\\\",x=\"y\",} 4 1700000000000\n\
        le_bucket{le=\"+Inf\"} +Inf\n\
        not a sample at all\n";

    #[test]
    fn finds_samples_by_name_and_exact_label_set_in_any_order() {
        assert_eq!(
            metric(PAGE, "vitals_worker_ready", &[("worker", "model")]),
            Some(1.0)
        );
        assert_eq!(
            metric(
                PAGE,
                "vitals_worker_hangs_total",
                &[("worker", "model"), ("reason", "loop_stalled")]
            ),
            Some(2.0)
        );
        assert_eq!(metric(PAGE, "vitals_up", &[]), Some(3.5));
        assert_eq!(
            metric(PAGE, "vitals_worker_ready", &[("worker", "x")]),
            None
        );
        assert_eq!(metric(PAGE, "vitals_worker_ready", &[]), None, "exact set");
        assert_eq!(
            metric(PAGE, "vitals_worker_hangs_total", &[("worker", "model")]),
            None
        );
        assert_eq!(metric(PAGE, "vitals", &[]), None, "whole names only");
    }

    #[test]
    fn reads_escapes_trailing_commas_timestamps_and_infinities() {
        assert_eq!(
            metric(PAGE, "odd", &[("x", "y"), ("path", "/a \"b\" {c}\\")]),
            Some(4.0),
            "the timestamp is not the value"
        );
        assert_eq!(
            metric(PAGE, "le_bucket", &[("le", "+Inf")]),
            Some(f64::INFINITY)
        );
        assert_eq!(
            samples(PAGE).len(),
            5,
            "comments, blanks and junk passed over"
        );
    }

    #[test]
    fn series_are_written_as_the_exposition_writes_them() {
        assert_eq!(
            series(
                PAGE,
                "vitals_worker_hangs_total{worker=\"model\",reason=\"loop_stalled\"}"
            ),
            Some(2.0)
        );
        assert_eq!(series(PAGE, "vitals_up"), Some(3.5));
        assert_eq!(series(PAGE, "vitals_worker_ready{worker=\"other\"}"), None);
    }

    #[test]
    fn bad_lines_are_errors() {
        assert!(parse_sample("x{a=\"never ends} 1").is_err());
        assert!(parse_sample("x{a=b} 1").is_err());
        assert!(parse_sample("x 1two").is_err());
        assert!(parse_sample("x").is_err());
        assert!(parse_sample("{a=\"b\"} 1").is_err());
    }
}
