//! Running the real tools (sfdisk, mkfs, unsquashfs, chroot ...) with every command and its
//! output written to the install log, so a failed install can be diagnosed from the log alone.
//!
//! Secrets (the admin's password hash, the database password's verifier) never go into a
//! command line: any user can read /proc/PID/cmdline. They go on stdin or in the environment
//! (/proc/PID/environ is readable by root only), neither of which is logged, and a tool that
//! repeats them in its output has them shown as `<redacted>` (see [`Tool::redact`]). The log
//! itself is readable by root only.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// The install log: a file, and optionally a copy of every line to the console.
pub struct Log {
    path: PathBuf,
    file: Mutex<File>,
}

impl Log {
    /// Starts a new log at `path`, readable by root only: it names the disks, the accounts and
    /// the tools' output. A file already there (an earlier attempt's) is emptied and made
    /// private too, as the mode given at creation applies to new files only.
    pub fn create(path: &Path) -> Result<Log> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(PRIVATE)
            .open(path)
            .map_err(|e| io_error(path, e))?;
        file.set_permissions(std::fs::Permissions::from_mode(PRIVATE)).map_err(|e| io_error(path, e))?;
        Ok(Log { path: path.to_owned(), file: Mutex::new(file) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn line(&self, text: &str) {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(file, "{text}");
        let _ = file.flush();
    }
}

/// The mode of the install log, here and on the installed system.
pub const PRIVATE: u32 = 0o600;

/// What a secret is shown as in the log and in errors.
const REDACTED: &str = "<redacted>";

pub fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Tool { command: format!("access {}", path.display()), message: e.to_string() }
}

/// One command line, built up and then run once.
pub struct Tool {
    program: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    stdin: Option<String>,
    chroot: Option<PathBuf>,
    secrets: Vec<String>,
}

impl Tool {
    pub fn new(program: &str) -> Tool {
        Tool {
            program: program.to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            stdin: None,
            chroot: None,
            secrets: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<str>) -> Tool {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Tool {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An environment variable: never logged (the way to hand a program a secret it does not
    /// read on stdin).
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Tool {
        self.envs.push((key.to_owned(), value.into()));
        self
    }

    /// What the program reads on stdin: never logged (the way to hand a program a secret).
    pub fn stdin(mut self, text: impl Into<String>) -> Tool {
        self.stdin = Some(text.into());
        self
    }

    /// A secret this tool is given (on stdin or in its environment) that must not reach the
    /// log or an error even if the tool repeats it (an error message quoting its input line):
    /// wherever its output or command line contains it, `<redacted>` is shown instead.
    pub fn redact(mut self, secret: impl Into<String>) -> Tool {
        let secret = secret.into();
        if !secret.is_empty() {
            self.secrets.push(secret);
        }
        self
    }

    /// `text` with every secret of this tool replaced.
    fn scrub(&self, text: &str) -> String {
        self.secrets.iter().fold(text.to_owned(), |text, secret| text.replace(secret.as_str(), REDACTED))
    }

    /// Runs the program inside `root` (the installed system) with a clean environment.
    pub fn in_root(mut self, root: &Path) -> Tool {
        self.chroot = Some(root.to_owned());
        self
    }

    /// The argument vector as it is spawned (`chroot <root> <program> ...` in a chroot): what
    /// any user can read in /proc/PID/cmdline while it runs.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = Vec::new();
        if let Some(root) = &self.chroot {
            argv.push("chroot".to_owned());
            argv.push(root.display().to_string());
        }
        argv.push(self.program.clone());
        argv.extend(self.args.iter().cloned());
        argv
    }

    /// What the program is given on stdin.
    pub fn stdin_text(&self) -> Option<&str> {
        self.stdin.as_deref()
    }

    fn display(&self) -> String {
        let mut shown = String::new();
        if let Some(root) = &self.chroot {
            shown.push_str(&format!("chroot {} ", root.display()));
        }
        shown.push_str(&self.program);
        for arg in &self.args {
            shown.push(' ');
            shown.push_str(arg);
        }
        self.scrub(&shown)
    }

    fn command(&self) -> Command {
        let mut cmd = match &self.chroot {
            Some(root) => {
                let mut c = Command::new("chroot");
                c.arg(root).arg(&self.program);
                c.env_clear()
                    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                    .env("LANG", "C.UTF-8")
                    .env("DEBIAN_FRONTEND", "noninteractive");
                c
            }
            None => {
                let mut c = Command::new(&self.program);
                c.env("LC_ALL", "C");
                c
            }
        };
        cmd.args(&self.args);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs to completion; stdout is returned, stdout and stderr are logged (secrets given to
    /// [`Tool::redact`] replaced; stdin and the environment never). A non-zero exit is an error
    /// carrying the command and the last lines it printed, secrets replaced the same way.
    pub fn run(self, log: &Log) -> Result<String> {
        let shown = self.display();
        log.line(&format!("$ {shown}"));
        let tool_error = |message: String| Error::Tool { command: shown.clone(), message };
        let mut child = self
            .command()
            .stdin(if self.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| tool_error(e.to_string()))?;
        if let Some(input) = &self.stdin {
            child.stdin.take().expect("piped").write_all(input.as_bytes()).map_err(|e| tool_error(e.to_string()))?;
        }
        let out = child.wait_with_output().map_err(|e| tool_error(e.to_string()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = self.scrub(&String::from_utf8_lossy(&out.stderr));
        for line in self.scrub(&stdout).lines().chain(stderr.lines()) {
            log.line(&format!("  {line}"));
        }
        if !out.status.success() {
            let stdout = self.scrub(&stdout);
            let said: Vec<&str> = stderr.lines().chain(stdout.lines()).filter(|l| !l.trim().is_empty()).collect();
            let tail = said[said.len().saturating_sub(8)..].join("\n");
            return Err(tool_error(format!("{} ({})", tail.trim(), out.status)));
        }
        Ok(stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_their_output_are_logged_and_failures_say_what_ran() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::create(&dir.path().join("install.log")).unwrap();
        let out = Tool::new("sh").args(["-c", "echo hello; echo warn >&2"]).run(&log).unwrap();
        assert_eq!(out, "hello\n");
        let err = Tool::new("sh").args(["-c", "echo broken >&2; exit 3"]).run(&log).unwrap_err().to_string();
        assert!(err.contains("`sh -c echo broken >&2; exit 3` failed: broken"), "{err}");
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(text.contains("$ sh -c echo hello") && text.contains("  warn") && text.contains("  broken"), "{text}");
    }

    #[test]
    fn the_log_is_readable_by_root_only_even_when_it_was_there_before() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("new/install.log");
        Log::create(&fresh).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o600);
        // A log left by an earlier attempt (or shipped world-readable) is made private too.
        let old = dir.path().join("old.log");
        std::fs::write(&old, "an earlier install\n").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        Log::create(&old).unwrap();
        assert_eq!(std::fs::metadata(&old).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&old).unwrap(), "", "a new install starts a new log");
    }

    #[test]
    fn a_secret_given_on_stdin_is_never_logged_even_when_the_tool_echoes_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::create(&dir.path().join("install.log")).unwrap();
        let hash = "$y$j9T$salt$VerySecretHashValue";
        // A tool that repeats its input on stdout and stderr and fails: the worst case.
        let err = Tool::new("sh")
            .args(["-c", "read -r line; echo \"$line\"; echo \"chpasswd: bad line: $line\" >&2; exit 1"])
            .stdin(format!("dba:{hash}\n"))
            .redact(hash)
            .run(&log)
            .unwrap_err()
            .to_string();
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(!text.contains("VerySecretHashValue"), "the log shows the secret:\n{text}");
        assert!(!err.contains("VerySecretHashValue"), "the error shows the secret: {err}");
        assert!(text.contains("dba:<redacted>"), "the output is logged, the secret replaced:\n{text}");
    }
}
