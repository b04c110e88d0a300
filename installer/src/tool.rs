//! Running the real tools (sfdisk, mkfs, unsquashfs, chroot ...) with every command and its
//! output written to the install log, so a failed install can be diagnosed from the log alone.

use std::fs::File;
use std::io::Write;
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
    pub fn create(path: &Path) -> Result<Log> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        }
        let file = File::create(path).map_err(|e| io_error(path, e))?;
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
}

impl Tool {
    pub fn new(program: &str) -> Tool {
        Tool { program: program.to_owned(), args: Vec::new(), envs: Vec::new(), stdin: None, chroot: None }
    }

    pub fn arg(mut self, arg: impl AsRef<str>) -> Tool {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Tool {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Tool {
        self.envs.push((key.to_owned(), value.into()));
        self
    }

    pub fn stdin(mut self, text: impl Into<String>) -> Tool {
        self.stdin = Some(text.into());
        self
    }

    /// Runs the program inside `root` (the installed system) with a clean environment.
    pub fn in_root(mut self, root: &Path) -> Tool {
        self.chroot = Some(root.to_owned());
        self
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
        shown
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

    /// Runs to completion; stdout is returned, stdout and stderr are logged. A non-zero exit
    /// is an error carrying the command and the last lines it printed.
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
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        for line in stdout.lines().chain(stderr.lines()) {
            log.line(&format!("  {line}"));
        }
        if !out.status.success() {
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
}
