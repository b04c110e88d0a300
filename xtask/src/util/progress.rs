//! Progress display: one line per pipeline stage with its elapsed time.
//!
//! On a terminal each running stage is an indicatif spinner whose message follows the stage's
//! sub-steps (live-build phases, for instance); elsewhere (CI logs) plain start/finish lines.
//! Stages are timed either way, and a failure names the stage that failed.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// A running stage; `set` updates its message.
pub struct Stage {
    bar: Option<ProgressBar>,
    name: &'static str,
}

impl Stage {
    /// A detail only worth showing live (on a terminal); not logged line by line.
    pub fn set_detail(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.to_owned());
        }
    }

    pub fn set(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(message.to_owned()),
            None => eprintln!("    {}: {message}", self.name),
        }
    }
}

/// Runs `f` as the stage `name`, showing it while it runs and its time when done.
pub fn stage<T>(name: &'static str, f: impl FnOnce(&Stage) -> Result<T>) -> Result<T> {
    let start = Instant::now();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner:.cyan} {prefix:.bold} [{elapsed}] {wide_msg}")
                .expect("valid template"),
        );
        bar.set_prefix(name);
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    if bar.is_none() {
        eprintln!("==> {name}");
    }
    let stage = Stage { bar, name };
    let result = f(&stage);
    let elapsed = format_duration(start.elapsed());
    let line = match &result {
        Ok(_) => format!("  done  {name} ({elapsed})"),
        Err(_) => format!("FAILED  {name} (after {elapsed})"),
    };
    if let Some(bar) = &stage.bar {
        bar.finish_and_clear();
    }
    eprintln!("{line}");
    result.with_context(|| format!("stage `{name}` failed"))
}

pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 { format!("{}m{:02}s", secs / 60, secs % 60) } else { format!("{:.1}s", d.as_secs_f64()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_the_stage() {
        let err = stage("checksums", |_| -> Result<()> { anyhow::bail!("disk full") }).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.starts_with("stage `checksums` failed") && msg.contains("disk full"), "{msg}");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(Duration::from_millis(2500)), "2.5s");
        assert_eq!(format_duration(Duration::from_secs(200)), "3m20s");
    }
}
