//! The one place xtask spawns processes.
//!
//! Every external tool (debootstrap, lb, gpg, qemu, apt-get, git, ...) is run through [`Cmd`]:
//! argv lists only (never `sh -c` with interpolated strings), a small fixed environment so a
//! build does not depend on the caller's shell, and failures that tell "not found",
//! "killed by signal" and "exit code N" apart and carry the tool's own last words.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
#[cfg(unix)]
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};

use anyhow::{Context, Result, bail};

/// How many lines of a failed tool's output an error message quotes.
const TAIL_LINES: usize = 25;

/// A command line to run: program, arguments, extra environment and working directory.
#[derive(Clone, Debug)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    dir: Option<PathBuf>,
    /// Bytes fed to the program's stdin: how secrets reach a tool, never the argument list
    /// (world-readable in /proc) nor a file. Never shown by `Display` or in logs.
    stdin: Option<Vec<u8>>,
    die_with_parent: bool,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
            stdin: None,
            die_with_parent: false,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Cmd {
        self.env.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Cmd {
        self.dir = Some(dir.into());
        self
    }

    /// Feeds `bytes` to the program's stdin (for secrets: see the field).
    pub fn stdin_secret(mut self, bytes: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(bytes.into());
        self
    }

    /// The kernel kills the program (SIGKILL) when xtask dies, however it dies: a SIGKILLed
    /// xtask must not leave a build namespace or a VM running. (The signal follows the thread
    /// that spawned the child: a thread that starts one must outlive it, as the VM tests'
    /// threads do, waiting for their VM.)
    pub fn die_with_parent(mut self) -> Cmd {
        self.die_with_parent = true;
        self
    }

    fn expression(&self) -> duct::Expression {
        // Arguments never hold secrets (they travel on stdin or in the environment, which is
        // not shown), so `-v` may print every command.
        crate::util::progress::verbose(|| format!("+ {self}"));
        // A fixed, small environment: the build must not change with the caller's locale,
        // aliases or a stray variable. Only PATH (so tools are found) and TERM pass through.
        let mut env: Vec<(OsString, OsString)> = vec![
            ("PATH".into(), std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into())),
            ("LC_ALL".into(), "C.UTF-8".into()),
            ("LANG".into(), "C.UTF-8".into()),
            ("HOME".into(), std::env::var_os("HOME").unwrap_or_else(|| "/root".into())),
        ];
        if let Some(term) = std::env::var_os("TERM") {
            env.push(("TERM".into(), term));
        }
        env.extend(self.env.iter().cloned());
        let mut expr = duct::cmd(&self.program, &self.args).full_env(env);
        if let Some(dir) = &self.dir {
            expr = expr.dir(dir);
        }
        if let Some(bytes) = &self.stdin {
            expr = expr.stdin_bytes(bytes.clone());
        }
        // PR_SET_PDEATHSIG is Linux's; elsewhere (macOS, where xtask only starts a container)
        // nothing that needs it runs on the host.
        #[cfg(target_os = "linux")]
        if self.die_with_parent {
            expr = expr.before_spawn(|command| {
                use std::os::unix::process::CommandExt;
                let parent = std::process::id() as libc::pid_t;
                // SAFETY: prctl and getppid are async-signal-safe; nothing else runs here.
                unsafe {
                    command.pre_exec(move || {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        // The parent may have died before prctl: then nobody would send it.
                        if libc::getppid() != parent {
                            libc::_exit(1);
                        }
                        Ok(())
                    });
                }
                Ok(())
            });
        }
        expr
    }

    /// Runs to completion with output captured; returns stdout. On failure the error quotes
    /// the end of stderr.
    pub fn read(&self) -> Result<String> {
        let output = self.capture()?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs to completion with output captured, failing on a non-zero exit.
    pub fn run(&self) -> Result<()> {
        self.capture().map(drop)
    }

    /// Runs to completion and returns the raw output whatever the exit status.
    pub fn output_unchecked(&self) -> Result<Output> {
        self.expression().stdout_capture().stderr_capture().unchecked().run().map_err(|e| self.spawn_error(e))
    }

    fn capture(&self) -> Result<Output> {
        let output = self.output_unchecked()?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stdout = String::from_utf8_lossy(&output.stdout);
            let said = if stderr.trim().is_empty() { stdout } else { stderr };
            bail!("`{self}` failed: {}\n{}", describe_status(output.status), tail(&said, TAIL_LINES));
        }
        Ok(output)
    }

    /// Runs with stdout and stderr merged and streamed, line by line, into `log` (appended)
    /// and to `on_line`. On failure the error names the log and quotes its last lines.
    pub fn run_logged(&self, log: &Path, mut on_line: impl FnMut(&str)) -> Result<()> {
        let mut log_file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log file {}", log.display()))?;
        writeln!(log_file, "$ {self}")?;
        let reader =
            self.expression().stderr_to_stdout().stdin_null().unchecked().reader().map_err(|e| self.spawn_error(e))?;
        let mut last_lines: Vec<String> = Vec::new();
        let mut lines = BufReader::new(&reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = lines.read_until(b'\n', &mut buf).with_context(|| format!("reading output of `{self}`"))?;
            if n == 0 {
                break;
            }
            log_file.write_all(&buf)?;
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end();
            on_line(line);
            last_lines.push(line.to_owned());
            if last_lines.len() > TAIL_LINES {
                last_lines.remove(0);
            }
        }
        let status = reader.try_wait()?.map(|out| out.status).context("child still running after its output ended")?;
        log_file.flush()?;
        if !status.success() {
            bail!(
                "`{self}` failed: {}\nfull log: {}\nlast lines:\n{}",
                describe_status(status),
                log.display(),
                last_lines.join("\n")
            );
        }
        Ok(())
    }

    /// Runs with the terminal's stdin/stdout/stderr (for commands whose output *is* the
    /// report, like a test runner), failing on a non-zero exit.
    pub fn run_inherit(&self) -> Result<()> {
        let output = self.expression().unchecked().run().map_err(|e| self.spawn_error(e))?;
        if !output.status.success() {
            bail!("`{self}` failed: {}", describe_status(output.status));
        }
        Ok(())
    }

    /// Runs with the terminal's stdout and stderr and returns the exit status. The program's
    /// stdin is a pipe whose only writer is this process and which is never written: it reads
    /// end of file exactly when xtask is gone, however it ended (a SIGKILL too). A container's
    /// entry point watches for that to stop its build (xtask/container/entry.sh): unlike
    /// [`Cmd::die_with_parent`], it works across a container engine's client and daemon, and
    /// on any host.
    pub fn run_with_lifeline(&self) -> Result<ExitStatus> {
        let (reader, writer) = std::io::pipe().context("making the lifeline pipe")?;
        let handle = self.expression().stdin_file(reader).unchecked().start().map_err(|e| self.spawn_error(e))?;
        let output = handle.wait().with_context(|| format!("waiting for `{self}`"));
        drop(writer);
        Ok(output?.status)
    }

    /// Starts in the background with stdout and stderr going to `log`; the caller waits on or
    /// kills the returned handle (duct also kills it when the handle is dropped unwaited).
    /// It dies with xtask (see [`Cmd::die_with_parent`]): a VM must not outlive its test.
    pub fn start_logged(&self, log: &Path) -> Result<duct::Handle> {
        let file = File::create(log).with_context(|| format!("creating log file {}", log.display()))?;
        self.clone()
            .die_with_parent()
            .expression()
            .stdin_null()
            .stdout_file(file.try_clone()?)
            .stderr_file(file)
            .unchecked()
            .start()
            .map_err(|e| self.spawn_error(e))
    }

    fn spawn_error(&self, e: std::io::Error) -> anyhow::Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!(
                "`{}` not found: is it installed? (`cargo xtask doctor` installs the host tools)",
                self.program.to_string_lossy()
            )
        } else {
            anyhow::Error::new(e).context(format!("starting `{self}`"))
        }
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.program.to_string_lossy())?;
        for arg in &self.args {
            let arg = arg.to_string_lossy();
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
                write!(f, " {arg:?}")?;
            } else {
                write!(f, " {arg}")?;
            }
        }
        Ok(())
    }
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// "exit code 2" / "killed by signal 9" rather than an opaque `ExitStatus` debug string.
pub fn describe_status(status: ExitStatus) -> String {
    #[cfg(unix)]
    let signal = status.signal();
    #[cfg(not(unix))]
    let signal: Option<i32> = None;
    match (status.code(), signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "unknown exit status".to_owned(),
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether `program` is on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .unwrap_or_else(|| DEFAULT_PATH.into())
        .to_string_lossy()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|dir| Path::new(dir).join(program).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_the_exit_code_and_quotes_stderr() {
        let err = Cmd::new("sh").args(["-c", "echo oops >&2; exit 3"]).run().unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("exit code 3"), "{msg}");
        assert!(msg.contains("oops"), "{msg}");
    }

    #[test]
    fn missing_program_is_reported_as_not_found() {
        let err = Cmd::new("truthdb-no-such-tool").run().unwrap_err();
        assert!(format!("{err:#}").contains("`truthdb-no-such-tool` not found"), "{err:#}");
    }

    #[test]
    fn logged_run_writes_every_line_and_quotes_the_tail_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let mut seen = Vec::new();
        let err = Cmd::new("sh")
            .args(["-c", "echo one; echo two >&2; exit 1"])
            .run_logged(&log, |l| seen.push(l.to_owned()))
            .unwrap_err();
        assert_eq!(seen, ["one", "two"]);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("one\ntwo\n"), "{text}");
        let msg = format!("{err:#}");
        assert!(msg.contains(&log.display().to_string()) && msg.contains("two"), "{msg}");
    }

    #[test]
    fn environment_is_fixed_not_inherited() {
        // cargo test runs this process with CARGO_MANIFEST_DIR set; a child must not see it.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let out = Cmd::new("env").read().unwrap();
        assert!(!out.contains("CARGO_MANIFEST_DIR"), "{out}");
        assert!(out.contains("LC_ALL=C.UTF-8"));
    }
}
