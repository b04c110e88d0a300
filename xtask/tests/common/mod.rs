//! Helpers for tests that run the real xtask binary against a copy of the project.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The project's inputs copied into a temporary directory, to be changed by a test.
pub struct ProjectCopy {
    pub dir: tempfile::TempDir,
}

impl ProjectCopy {
    pub fn new() -> ProjectCopy {
        let dir = tempfile::Builder::new().prefix("truthdb-project-").tempdir().unwrap();
        let root = repo_root();
        fs::copy(root.join("Cargo.toml"), dir.path().join("Cargo.toml")).unwrap();
        fs::copy(root.join("packages.list"), dir.path().join("packages.list")).unwrap();
        fs::copy(root.join("Cargo.lock"), dir.path().join("Cargo.lock")).unwrap();
        // The whole workspace (cargo needs every member to build the installer), less target/.
        for sub in ["lb-config", "hooks", "overlay", "kernel", "installer", "xtask"] {
            copy_dir(&root.join(sub), &dir.path().join(sub));
        }
        ProjectCopy { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file, making its directories.
    pub fn write(&self, rel: &str, text: &str) {
        fs::create_dir_all(self.path(rel).parent().unwrap()).unwrap();
        fs::write(self.path(rel), text).unwrap();
    }

    /// Appends one line; returns its line number.
    pub fn append_line(&self, rel: &str, line: &str) -> usize {
        let old = fs::read_to_string(self.path(rel)).unwrap();
        self.write(rel, &format!("{old}{line}\n"));
        old.lines().count() + 1
    }

    pub fn append(&self, rel: &str, text: &str) {
        let old = fs::read_to_string(self.path(rel)).unwrap();
        self.write(rel, &(old + text));
    }

    /// Runs `xtask --project <copy> args...` with a fixed SOURCE_DATE_EPOCH (no git here).
    pub fn xtask(&self, args: &[&str]) -> Output {
        self.xtask_at_epoch(args, 1_767_225_600)
    }

    /// Runs xtask in the copy with SOURCE_DATE_EPOCH `epoch`. The kernel's cache key holds its
    /// timestamp: a build that must find the repository's kernel in the cache passes
    /// [`kernel_epoch`], or it compiles a kernel (18 minutes) for the copy.
    pub fn xtask_at_epoch(&self, args: &[&str], epoch: u64) -> Output {
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .arg("--project")
            .arg(self.dir.path())
            .args(args)
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .output()
            .unwrap()
    }
}

/// The repository's kernel timestamp: the last commit touching `kernel/` less its READMEs
/// (what `iso` and `kernel` use when SOURCE_DATE_EPOCH is not set).
pub fn kernel_epoch() -> u64 {
    let out = Command::new("git")
        .args(["-c", "safe.directory=*", "log", "-1", "--format=%ct", "--", "kernel", ":(exclude,glob)kernel/**/*.md"])
        .current_dir(repo_root())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("the repository has a commit touching kernel/")
}

fn copy_dir(src: &Path, dest: &Path) {
    let status = Command::new("cp").arg("-a").arg(src).arg(dest).status().unwrap();
    assert!(status.success());
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A directory listing with file contents, to prove a directory was left exactly as it was.
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut entries: Vec<(String, Vec<u8>)> = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .map(|e| e.unwrap())
        .map(|e| {
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            let content = if e.file_type().is_file() { fs::read(e.path()).unwrap() } else { Vec::new() };
            (rel, content)
        })
        .collect();
    entries.sort();
    entries
}
