//! The tests' Prometheus text-format (0.0.4) lookups: one sample by metric name and exact
//! label set, in any label order. Pages are read with the core's exposition parser
//! ([`vitals_core::expo`], the one the agent reads model servers' pages with), so the tests
//! and the agent share one reading of the format; whether a page is also lint-clean is
//! promtool's job ([`promtool_check`]).

use std::io::Write;
use std::process::{Command, Stdio};

use vitals_core::expo::{self, Sample};

/// Whether `sample` is `name` with exactly the label set `labels`, in any order.
fn is(sample: &Sample<'_>, name: &str, labels: &[(&str, &str)]) -> bool {
    sample.name == name
        && sample.labels.len() == labels.len()
        && labels
            .iter()
            .all(|(k, v)| sample.labels.iter().any(|(gk, gv)| gk == k && gv == v))
}

/// The value of the sample `name` with exactly the label set `labels` (`&[]` for none);
/// `None` also when `text` is not exposition text (an error page from a server that is
/// restarting, a truncated body): no sample can be read from it.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    expo::parse(text)
        .ok()?
        .into_iter()
        .find(|s| is(s, name, labels))
        .map(|s| s.value)
}

/// The value of a series written as the exposition writes it: `name{a="b",c="d"}` (label
/// order does not matter).
///
/// # Panics
/// When `series` is not a metric name with an optional label set: a mistake in the test.
pub fn series(text: &str, series: &str) -> Option<f64> {
    // A series is a sample line without its value: read it as a one-line page.
    let line = format!("{series} 0");
    let parsed = expo::parse(&line).unwrap_or_else(|e| panic!("{series:?} is not a series ({e})"));
    let [wanted] = parsed.as_slice() else {
        panic!("{series:?} is not one series");
    };
    let labels: Vec<(&str, &str)> = wanted
        .labels
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    metric(text, wanted.name, &labels)
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

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP vitals_worker_ready x\n# TYPE vitals_worker_ready gauge\n\
        vitals_worker_ready{worker=\"model\"} 1\n\
        vitals_worker_hangs_total{reason=\"loop_stalled\",worker=\"model\"} 2\n\
        vitals_up 3.5\n\
        \n\
        odd{path=\"/a \\\"b\\\" {c}\\\\\",x=\"y\",} 4 1700000000000\n\
        le_bucket{le=\"+Inf\"} +Inf\n";

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
    fn a_page_that_is_not_exposition_text_has_no_samples() {
        for bad in [
            "x{a=\"never ends} 1",
            "x{a=b} 1",
            "x 1two",
            "x",
            "{a=\"b\"} 1",
            "<html>503 Service Unavailable</html>",
        ] {
            let page = format!("vitals_up 1\n{bad}\n");
            assert_eq!(metric(&page, "vitals_up", &[]), None, "{bad:?}");
        }
    }

    #[test]
    #[should_panic(expected = "is not a series")]
    fn a_series_that_is_not_one_is_a_mistake_in_the_test() {
        series(PAGE, "vitals_up{worker=model}");
    }
}
