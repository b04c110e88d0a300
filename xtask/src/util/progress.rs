//! Progress display: one line per pipeline stage with its elapsed time, and how loud and how
//! colourful xtask is (`-v`, `-q`, `--color`, `NO_COLOR`).
//!
//! On a terminal each running stage is an indicatif spinner whose message follows the stage's
//! sub-steps (live-build phases, for instance); elsewhere (CI logs) plain start/finish lines,
//! and on GitHub Actions each stage is a collapsible `::group::`. `-q` leaves only results and
//! errors; `-v` prints every sub-step as a line (also on a terminal) and every command run.
//! Stages are timed either way, and a failure names the stage that failed.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// The global flags for how xtask talks.
#[derive(clap::Args, Debug)]
pub struct OutputArgs {
    /// More output: every sub-step of a stage as a line, and each command xtask runs.
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    pub verbose: bool,
    /// Less output: no progress lines, only results, warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Colour on stderr: auto (a terminal, and NO_COLOR unset or empty), always or never.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

/// How this run talks, fixed once by [`OutputArgs::apply`].
#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub verbosity: Verbosity,
    pub color: bool,
    /// On GitHub Actions (`GITHUB_ACTIONS=true`): stages are `::group::`s.
    pub github_groups: bool,
}

static OUTPUT: OnceLock<Output> = OnceLock::new();

impl OutputArgs {
    /// Decides colour, loudness and grouping from the flags and the environment.
    pub fn output(&self, env: impl Fn(&str) -> Option<String>, stderr_is_terminal: bool) -> Output {
        let no_color = env("NO_COLOR").is_some_and(|v| !v.is_empty());
        Output {
            verbosity: match (self.quiet, self.verbose) {
                (true, _) => Verbosity::Quiet,
                (false, true) => Verbosity::Verbose,
                (false, false) => Verbosity::Normal,
            },
            color: match self.color {
                ColorChoice::Always => true,
                ColorChoice::Never => false,
                ColorChoice::Auto => stderr_is_terminal && !no_color,
            },
            github_groups: env("GITHUB_ACTIONS").as_deref() == Some("true"),
        }
    }

    /// Fixes this process's output settings (the first call wins).
    pub fn apply(&self) {
        let output = self.output(|key| std::env::var(key).ok(), std::io::stderr().is_terminal());
        let _ = OUTPUT.set(output);
    }
}

/// This run's output settings (defaults when nothing was applied, as in unit tests).
pub fn output() -> Output {
    *OUTPUT.get_or_init(|| Output { verbosity: Verbosity::Normal, color: false, github_groups: false })
}

/// `text` in bold red when colour is on (for "error" and "FAILED").
pub fn red(text: &str) -> String {
    if output().color { format!("\x1b[1;31m{text}\x1b[0m") } else { text.to_owned() }
}

/// A line only `-v` shows (on stderr).
pub fn verbose(line: impl FnOnce() -> String) {
    if output().verbosity == Verbosity::Verbose {
        eprintln!("{}", line());
    }
}

/// A running stage; `set` updates its message.
pub struct Stage {
    bar: Option<ProgressBar>,
    name: &'static str,
}

impl Stage {
    /// A detail only worth showing live (on a terminal); not logged line by line.
    pub fn set_detail(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(message.to_owned()),
            None => verbose(|| format!("    {}: {message}", self.name)),
        }
    }

    pub fn set(&self, message: &str) {
        match (&self.bar, output().verbosity) {
            (Some(bar), _) => bar.set_message(message.to_owned()),
            (None, Verbosity::Quiet) => {}
            (None, _) => eprintln!("    {}: {message}", self.name),
        }
    }
}

/// Runs `f` as the stage `name`, showing it while it runs and its time when done.
pub fn stage<T>(name: &'static str, f: impl FnOnce(&Stage) -> Result<T>) -> Result<T> {
    let start = Instant::now();
    let out = output();
    // A spinner only where a person watches with the default loudness; -v wants every line.
    let spinner = std::io::stderr().is_terminal() && out.verbosity == Verbosity::Normal && !out.github_groups;
    let bar = spinner.then(|| {
        let template = if out.color {
            "{spinner:.cyan} {prefix:.bold} [{elapsed}] {wide_msg}"
        } else {
            "{spinner} {prefix} [{elapsed}] {wide_msg}"
        };
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
        bar.set_prefix(name);
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    if bar.is_none() && out.verbosity != Verbosity::Quiet {
        if out.github_groups {
            eprintln!("::group::{name}");
        } else {
            eprintln!("==> {name}");
        }
    }
    let stage = Stage { bar, name };
    let result = f(&stage);
    let elapsed = format_duration(start.elapsed());
    if let Some(bar) = &stage.bar {
        bar.finish_and_clear();
    }
    if out.github_groups && out.verbosity != Verbosity::Quiet {
        eprintln!("::endgroup::");
    }
    match &result {
        Ok(_) if out.verbosity == Verbosity::Quiet => {}
        Ok(_) => eprintln!("  done  {name} ({elapsed})"),
        Err(_) => eprintln!("{}  {name} (after {elapsed})", red("FAILED")),
    }
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

    fn flags(args: &[&str]) -> OutputArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            output: OutputArgs,
        }
        <Cli as clap::Parser>::parse_from(std::iter::once("xtask").chain(args.iter().copied())).output
    }

    #[test]
    fn colour_follows_the_flag_the_terminal_and_no_color() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| (*v).to_owned())
        };
        assert!(flags(&[]).output(env(&[]), true).color);
        assert!(!flags(&[]).output(env(&[]), false).color, "not a terminal");
        assert!(!flags(&[]).output(env(&[("NO_COLOR", "1")]), true).color, "NO_COLOR");
        assert!(flags(&[]).output(env(&[("NO_COLOR", "")]), true).color, "an empty NO_COLOR is unset");
        assert!(flags(&["--color", "always"]).output(env(&[("NO_COLOR", "1")]), false).color);
        assert!(!flags(&["--color", "never"]).output(env(&[]), true).color);
    }

    #[test]
    fn loudness_and_github_groups_follow_flags_and_environment() {
        let none = |_: &str| None;
        assert_eq!(flags(&["-q"]).output(none, false).verbosity, Verbosity::Quiet);
        assert_eq!(flags(&["-v"]).output(none, false).verbosity, Verbosity::Verbose);
        assert_eq!(flags(&[]).output(none, false).verbosity, Verbosity::Normal);
        assert!(!flags(&[]).output(none, false).github_groups);
        let actions = |key: &str| (key == "GITHUB_ACTIONS").then(|| "true".to_owned());
        assert!(flags(&[]).output(actions, false).github_groups);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(Duration::from_millis(2500)), "2.5s");
        assert_eq!(format_duration(Duration::from_secs(200)), "3m20s");
    }
}
