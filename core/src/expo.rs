//! A strict parser of the Prometheus text exposition format (version 0.0.4), enough to read
//! a model server's `/metrics`: sample lines (name, labels, value, optional timestamp),
//! `# HELP` / `# TYPE` lines, other comments and blank lines. Anything else is an error
//! with its line number, so a page that is not metrics (an HTML error page, a truncated
//! body) is never read as zeros.
//!
//! The one reader of the format in the project: the agent reads model servers' pages with
//! it, and the test toolkit (`vitals_e2e::prom`) the agent's and the worker's own. Written
//! here because the `prometheus` crate only writes the format, and the parsers on crates.io
//! pull in far more than the agent needs for summing a few series.
//! Reference: the format's specification in prometheus/docs
//! (content/docs/instrumenting/exposition_formats.md).

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// Metric name as written (`vllm:num_requests_running`, `x_bucket`, ...).
    pub name: &'a str,
    /// Label pairs in order, values unescaped.
    pub labels: Vec<(&'a str, String)>,
    /// The value (`NaN`, `+Inf`, `-Inf` allowed).
    pub value: f64,
    /// The place value of the last digit the server printed (`123` → 1, `8812.0` → 0.1,
    /// `1.23457e+08` → 1000): the smallest change two readings of it can show.
    pub resolution: f64,
}

/// Why a page is not valid exposition text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct ExpoError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub problem: &'static str,
}

/// Whether `s` is a valid metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn is_metric_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// Whether `s` is a valid label name (`[a-zA-Z_][a-zA-Z0-9_]*`).
pub fn is_label_name(s: &str) -> bool {
    !s.is_empty() && !s.contains(':') && is_metric_name(s)
}

const TYPES: [&str; 5] = ["counter", "gauge", "histogram", "summary", "untyped"];

/// Parses a whole page.
pub fn parse(text: &str) -> Result<Vec<Sample<'_>>, ExpoError> {
    let mut out = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let l = raw
            .strip_suffix('\r')
            .unwrap_or(raw)
            .trim_start_matches([' ', '\t']);
        if l.is_empty() {
            continue;
        }
        if let Some(comment) = l.strip_prefix('#') {
            comment_line(comment).map_err(|problem| ExpoError { line, problem })?;
            continue;
        }
        out.push(sample_line(l).map_err(|problem| ExpoError { line, problem })?);
    }
    Ok(out)
}

fn comment_line(c: &str) -> Result<(), &'static str> {
    let mut words = c.trim_start_matches([' ', '\t']).splitn(3, [' ', '\t']);
    match words.next() {
        Some("TYPE") => {
            let name = words.next().unwrap_or("");
            if !is_metric_name(name) {
                return Err("# TYPE without a valid metric name");
            }
            let ty = words.next().unwrap_or("").trim();
            if !TYPES.contains(&ty) {
                return Err("# TYPE with an unknown type");
            }
            Ok(())
        }
        Some("HELP") => {
            if !is_metric_name(words.next().unwrap_or("")) {
                return Err("# HELP without a valid metric name");
            }
            Ok(())
        }
        // Any other comment is allowed by the format.
        _ => Ok(()),
    }
}

fn sample_line(l: &str) -> Result<Sample<'_>, &'static str> {
    let name_end = l
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(l.len());
    let name = &l[..name_end];
    if !is_metric_name(name) {
        return Err("a sample line must start with a metric name");
    }
    let mut rest = &l[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = labels_block(after, &mut labels)?;
    }
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    let text = fields.next().ok_or("a sample without a value")?;
    let value = parse_value(text).ok_or("a value that is not a number")?;
    if let Some(ts) = fields.next() {
        if ts.parse::<i64>().is_err() {
            return Err("a timestamp that is not an integer");
        }
    }
    if fields.next().is_some() {
        return Err("text after the timestamp");
    }
    if !rest.starts_with([' ', '\t']) {
        return Err("no space between the name (or labels) and the value");
    }
    Ok(Sample {
        name,
        labels,
        value,
        resolution: resolution(text),
    })
}

/// The place value of the last digit of a printed number (`1.5` → 0.1, `1e+06` → 1e6):
/// text alone cannot tell trailing zeros a printer dropped from digits it never had, so
/// this is the coarsest the reading may be. Infinite for `NaN` and the infinities.
fn resolution(text: &str) -> f64 {
    if text
        .bytes()
        .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E')
    {
        return f64::INFINITY;
    }
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (text, 0),
    };
    let fraction_digits = mantissa
        .split_once('.')
        .map_or(0, |(_, f)| i32::try_from(f.len()).unwrap_or(i32::MAX));
    10f64.powi(exponent.saturating_sub(fraction_digits))
}

/// Reads `name="value",...}`; returns what follows the `}`.
fn labels_block<'a>(
    mut s: &'a str,
    labels: &mut Vec<(&'a str, String)>,
) -> Result<&'a str, &'static str> {
    loop {
        s = s.trim_start_matches([' ', '\t']);
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let eq = s.find('=').ok_or("a label without `=`")?;
        let key = s[..eq].trim_end_matches([' ', '\t']);
        if !is_label_name(key) {
            return Err("an invalid label name");
        }
        s = s[eq + 1..].trim_start_matches([' ', '\t']);
        s = s.strip_prefix('"').ok_or("a label value without quotes")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("an unterminated label value"),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    _ => return Err("an invalid escape in a label value"),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((key, value));
        s = s[end + 1..].trim_start_matches([' ', '\t']);
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err("labels must be separated by `,`");
        }
    }
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Rust's parser also takes "inf"/"infinity"/"nan" spellings the format does not.
        _ if v
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') =>
        {
            None
        }
        _ => v.parse().ok(),
    }
}

/// The sum of every series of each name in `names` (all label sets), `None` where the page
/// has no series of that name. NaN samples are skipped.
pub fn totals(samples: &[Sample<'_>], names: &[String]) -> Vec<Option<f64>> {
    names
        .iter()
        .map(|n| {
            samples
                .iter()
                .filter(|s| s.name == n && !s.value.is_nan())
                .map(|s| s.value)
                .reduce(|a, b| a + b)
        })
        .collect()
}

/// The series of `names`, grouped by their value of `label` (a series without it, or
/// every series when `label` is `None`, in the `None` group).
pub fn by_label<'a>(
    samples: &[Sample<'a>],
    names: &[String],
    label: Option<&str>,
) -> BTreeMap<Option<String>, Vec<Sample<'a>>> {
    let mut groups: BTreeMap<Option<String>, Vec<Sample<'a>>> = BTreeMap::new();
    for s in samples.iter().filter(|s| names.iter().any(|n| n == s.name)) {
        let key = label.and_then(|l| {
            s.labels
                .iter()
                .find(|(k, _)| *k == l)
                .map(|(_, v)| v.clone())
        });
        groups.entry(key).or_default().push(s.clone());
    }
    groups
}

/// Whether the series of gauge `name` whose `label` is `awake` all read 0 (asleep);
/// `None` when the page has no such series.
pub fn asleep(samples: &[Sample<'_>], name: &str, label: &str, awake: &str) -> Option<bool> {
    samples
        .iter()
        .filter(|s| s.name == name && s.labels.iter().any(|(k, v)| *k == label && v == awake))
        .map(|s| s.value == 0.0)
        .reduce(|a, b| a && b)
}

/// The coarsest [`Sample::resolution`] among the series of `names` (0 when none is
/// present): the smallest change their sums are sure to show.
pub fn coarsest(samples: &[Sample<'_>], names: &[String]) -> f64 {
    samples
        .iter()
        .filter(|s| names.iter().any(|n| n == s.name))
        .map(|s| s.resolution)
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// vLLM's /metrics (v1 engine), as served by `vllm serve`: prometheus_client output with
    /// the names defined in vllm-project/vllm vllm/v1/metrics/loggers.py.
    const VLLM: &str = r#"# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 12039.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.0
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 8812.0
# HELP vllm:iteration_tokens_total Histogram of number of tokens per engine_step.
# TYPE vllm:iteration_tokens_total histogram
vllm:iteration_tokens_total_bucket{engine="0",le="1.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 510.0
vllm:iteration_tokens_total_bucket{engine="0",le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 977.0
vllm:iteration_tokens_total_count{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 977.0
vllm:iteration_tokens_total_sum{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 10355.0
# HELP vllm:iteration_tokens_total_created Histogram of number of tokens per engine_step.
# TYPE vllm:iteration_tokens_total_created gauge
vllm:iteration_tokens_total_created{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.7318e+09
"#;

    /// llama.cpp's server (tools/server in ggml-org/llama.cpp, `--metrics`): `llamacpp:`
    /// names, no labels.
    const LLAMACPP: &str = "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n# TYPE llamacpp:prompt_tokens_total counter\nllamacpp:prompt_tokens_total 12\n# HELP llamacpp:n_decode_total Total number of llama_decode() calls\n# TYPE llamacpp:n_decode_total counter\nllamacpp:n_decode_total 51\n# HELP llamacpp:requests_processing Number of requests processing.\n# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 1\n# HELP llamacpp:requests_deferred Number of requests deferred.\n# TYPE llamacpp:requests_deferred gauge\nllamacpp:requests_deferred 0\n";

    /// TGI/TEI (metrics-exporter-prometheus: no HELP, integer-looking values, quantiles).
    const TGI: &str = "# TYPE tgi_queue_size gauge\ntgi_queue_size 2\n\n# TYPE tgi_batch_current_size gauge\ntgi_batch_current_size 4\n\n# TYPE tgi_batch_inference_success counter\ntgi_batch_inference_success{method=\"decode\"} 1200\ntgi_batch_inference_success{method=\"prefill\"} 40\n\n# TYPE tgi_request_duration summary\ntgi_request_duration{quantile=\"0.5\"} 0.08\ntgi_request_duration_sum 3.2\ntgi_request_duration_count 40\n";

    /// Triton (triton-inference-server/core src/metrics.cc, prometheus-cpp output).
    const TRITON: &str = "# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.\n# TYPE nv_inference_pending_request_count gauge\nnv_inference_pending_request_count{model=\"simple\",version=\"1\"} 0\nnv_inference_pending_request_count{model=\"densenet\",version=\"1\"} 2\n# HELP nv_inference_exec_count Number of model executions performed (does not include cached requests)\n# TYPE nv_inference_exec_count counter\nnv_inference_exec_count{model=\"simple\",version=\"1\"} 7\nnv_inference_exec_count{model=\"densenet\",version=\"1\"} 11\n";

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn real_pages_parse_and_sum() {
        let v = parse(VLLM).expect("vllm page");
        assert_eq!(
            totals(
                &v,
                &names(&[
                    "vllm:num_requests_running",
                    "vllm:iteration_tokens_total_count",
                    "absent"
                ])
            ),
            vec![Some(3.0), Some(977.0), None]
        );
        assert_eq!(
            v[1].labels[1],
            ("model_name", "meta-llama/Llama-3.1-8B-Instruct".to_string())
        );
        let l = parse(LLAMACPP).expect("llama.cpp page");
        assert_eq!(
            totals(&l, &names(&["llamacpp:requests_processing"])),
            vec![Some(1.0)]
        );
        let t = parse(TGI).expect("tgi page");
        assert_eq!(
            totals(&t, &names(&["tgi_batch_inference_success"])),
            vec![Some(1240.0)]
        );
        let tr = parse(TRITON).expect("triton page");
        assert_eq!(
            totals(
                &tr,
                &names(&[
                    "nv_inference_pending_request_count",
                    "nv_inference_exec_count"
                ])
            ),
            vec![Some(2.0), Some(18.0)]
        );
    }

    #[test]
    fn escapes_specials_and_timestamps() {
        let s = parse("a{b=\"x\\\"y\\\\z\\n\",} -Inf 1700000000000\r\nc NaN\nd +Inf\ne 1e3\n")
            .expect("valid");
        assert_eq!(s[0].labels, vec![("b", "x\"y\\z\n".to_string())]);
        assert_eq!(s[0].value, f64::NEG_INFINITY);
        assert!(s[1].value.is_nan());
        assert_eq!(s[2].value, f64::INFINITY);
        assert_eq!(s[3].value, 1000.0);
        assert_eq!(totals(&s, &names(&["c"])), vec![None]);
    }

    #[test]
    fn what_is_not_metrics_is_refused_with_its_line() {
        let cases = [
            (
                "<html><body>502 Bad Gateway</body></html>",
                1,
                "metric name",
            ),
            ("ok 1\n{a=\"b\"} 2", 2, "metric name"),
            ("a{b=\"c\" 1", 1, "separated"),
            ("a{b=\"c} 1", 1, "unterminated"),
            ("a{b=c} 1", 1, "quotes"),
            ("a{1b=\"c\"} 1", 1, "label name"),
            ("a{b=\"\\x\"} 1", 1, "escape"),
            ("a", 1, "without a value"),
            ("a one", 1, "not a number"),
            ("a inf", 1, "not a number"),
            ("a 1 2.5", 1, "timestamp"),
            ("a 1 2 3", 1, "after the timestamp"),
            ("a{b=\"c\"}1", 1, "no space"),
            ("# TYPE a gauge\n# TYPE b histogramm", 2, "unknown type"),
            ("# HELP", 1, "HELP"),
        ];
        for (text, line, want) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(e.problem.contains(want), "{text}: {e}, want {want}");
        }
    }

    #[test]
    fn printed_precision() {
        // llama.cpp's `std::stringstream << double` (6 significant digits), Python's repr,
        // prometheus-cpp and metrics-exporter-prometheus spellings.
        for (text, want) in [
            ("123", 1.0),
            ("999999", 1.0),
            ("8812.0", 0.1),
            ("0.125", 0.001),
            ("1.23457e+08", 1000.0),
            ("1e+06", 1e6),
            ("1.5E3", 100.0),
            ("2.5e-3", 1e-4),
            ("NaN", f64::INFINITY),
            ("+Inf", f64::INFINITY),
        ] {
            assert_eq!(resolution(text), want, "{text}");
        }
        let page = parse("a 1.23457e+08\nb 12\nc{x=\"1\"} 3.5\n").expect("valid");
        assert_eq!(coarsest(&page, &names(&["b", "c"])), 1.0);
        assert_eq!(coarsest(&page, &names(&["a", "b"])), 1000.0);
        assert_eq!(coarsest(&page, &names(&["absent"])), 0.0);
    }

    #[test]
    fn metric_names() {
        assert!(is_metric_name("vllm:num_requests_running"));
        assert!(is_metric_name("_x1"));
        assert!(!is_metric_name("1x"));
        assert!(!is_metric_name(""));
        assert!(!is_metric_name("a-b"));
    }
}
