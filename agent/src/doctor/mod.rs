//! `tokenscope doctor`: whether capture can work on this node, and why not.
//!
//! Every check does the real thing: the probes are loaded and attached, an
//! event is read back from the ring buffer, uprobes are attached to a real
//! libssl, NVML is initialised. Only those attempts decide
//! [`Report::capture_possible`]; the capability check is advice on why an
//! attempt failed or which parts of capture degrade, so it never fails alone.

pub(crate) mod caps;
mod capture;
mod checks;

use serde::Serialize;

#[derive(Clone, Debug, Default, clap::Args)]
pub struct DoctorArgs {
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works.
    Ok,
    /// Works partly, or something optional is absent; capture still works.
    Warn,
    /// Capture cannot work until this is fixed.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One check: a stable `name`, its outcome, and what was found or went wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    /// One finding per line.
    pub detail: String,
}

impl Check {
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
        }
    }

    pub fn warn(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Warn,
            detail: detail.into(),
        }
    }

    pub fn fail(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Fail,
            detail: detail.into(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

/// The JSON form: the checks and the verdict drawn from them.
#[derive(Serialize)]
struct JsonReport<'a> {
    capture_possible: bool,
    checks: &'a [Check],
}

impl Report {
    /// True when no check failed.
    pub fn capture_possible(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// One line per check (details indented below it), then the verdict.
    pub fn render_text(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for check in &self.checks {
            let mut lines = check.detail.lines();
            let first = lines.next().unwrap_or("");
            out.push_str(&format!(
                "{:<4}  {:<width$}  {first}\n",
                check.status.label(),
                check.name
            ));
            for line in lines {
                out.push_str(&format!("{:<4}  {:<width$}    {line}\n", "", ""));
            }
        }
        let failed: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .map(|c| c.name)
            .collect();
        if failed.is_empty() {
            out.push_str("capture is possible on this node\n");
        } else {
            out.push_str(&format!(
                "capture is NOT possible on this node (failed: {})\n",
                failed.join(", ")
            ));
        }
        out
    }

    /// `{"capture_possible": …, "checks": [{"name", "status", "detail"}…]}`, pretty-printed.
    pub fn render_json(&self) -> String {
        let json = JsonReport {
            capture_possible: self.capture_possible(),
            checks: &self.checks,
        };
        serde_json::to_string_pretty(&json).expect("a report is only strings, enums and bools")
    }
}

/// Runs every check in order. A failed check is a [`Status::Fail`] entry in
/// the report, not an `Err`: nothing the doctor finds ends it early. The
/// probes are detached before this returns.
pub fn run(_args: &DoctorArgs) -> anyhow::Result<Report> {
    let mut checks = vec![
        checks::privileges(),
        checks::kernel(),
        checks::btf(),
        checks::tracefs(),
    ];
    let mut scanner = crate::probes::tls::TlsScanner::default();
    let host_targets = scanner.scan_host();
    checks.extend(capture::capture(&host_targets));
    checks.push(checks::kprobes());
    checks.push(checks::nvml());
    checks.push(checks::tls_targets(&mut scanner, host_targets));
    Ok(Report { checks })
}

/// `error: cause: cause…`, as an operator needs to read it.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Some errors (libloading's) repeat their source in their own message.
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            checks: vec![
                Check::ok("kernel", "6.8.0-45-generic"),
                Check::warn("nvml", "no NVIDIA driver"),
                Check::fail("probes", "loading failed\nrun as root"),
            ],
        }
    }

    #[test]
    fn any_failure_makes_capture_impossible() {
        assert!(!sample().capture_possible());
        let mut report = sample();
        report.checks.retain(|c| c.status != Status::Fail);
        assert!(report.capture_possible(), "warnings alone do not block");
        assert!(Report::default().capture_possible());
    }

    #[test]
    fn text_aligns_names_and_indents_continuation_lines() {
        let text = sample().render_text();
        assert_eq!(
            text,
            "ok    kernel  6.8.0-45-generic\n\
             WARN  nvml    no NVIDIA driver\n\
             FAIL  probes  loading failed\n\
             \x20               run as root\n\
             capture is NOT possible on this node (failed: probes)\n"
        );
        let mut report = sample();
        report.checks.truncate(2);
        assert!(report
            .render_text()
            .ends_with("capture is possible on this node\n"));
    }

    #[test]
    fn json_carries_the_verdict_and_lowercase_statuses() {
        let value: serde_json::Value = serde_json::from_str(&sample().render_json()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "capture_possible": false,
                "checks": [
                    {"name": "kernel", "status": "ok", "detail": "6.8.0-45-generic"},
                    {"name": "nvml", "status": "warn", "detail": "no NVIDIA driver"},
                    {"name": "probes", "status": "fail", "detail": "loading failed\nrun as root"},
                ]
            })
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("loading failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_chain_joins_sources() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        assert_eq!(error_chain(&Outer(io)), "loading failed: denied");
        assert_eq!(
            error_chain(&caps::StatusError::Missing("Uid")),
            "/proc/self/status has no Uid line"
        );
    }
}
