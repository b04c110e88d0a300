//! Docs stay true to the tree: every repository path a README or ARCHITECTURE.md names in
//! backticks exists, and every source file ARCHITECTURE.md's code map names exists.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::repo_root;

/// The documents a newcomer reads.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut docs = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    for entry in walkdir::WalkDir::new(root)
        .into_iter()
        .filter_entry(|e| !matches!(e.file_name().to_str(), Some("target" | "golden" | ".git")))
        .flatten()
    {
        if entry.file_name() == "README.md" && entry.depth() > 1 {
            docs.push(entry.into_path());
        }
    }
    docs
}

/// Text between backticks, with the line it is on.
fn code_spans(text: &str) -> Vec<(usize, String)> {
    let mut spans = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let mut parts = line.split('`');
        parts.next();
        while let (Some(inside), Some(_)) = (parts.next(), parts.next()) {
            spans.push((index + 1, inside.to_owned()));
        }
    }
    spans
}

/// A span that names a repository path: it starts with a top-level entry of the repository
/// followed by `/` (or is one of its top-level files) and holds no pattern or placeholder.
fn as_repo_path(span: &str, top_level: &[String]) -> Option<String> {
    if span.contains(['*', '<', '{', ' ', '$']) {
        return None;
    }
    let path = span.trim_end_matches('/');
    let first = path.split('/').next()?;
    let names_top = top_level.iter().any(|t| t == first);
    (names_top && (span.contains('/') || path.contains('.'))).then(|| path.to_owned())
}

#[test]
fn every_path_the_docs_name_exists() {
    let root = repo_root();
    let top_level: Vec<String> = fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.') && name != "target")
        .collect();
    let (mut missing, mut checked) = (Vec::new(), 0);
    for doc in documents(&root) {
        let text = fs::read_to_string(&doc).unwrap();
        for (line, span) in code_spans(&text) {
            let Some(path) = as_repo_path(&span, &top_level) else { continue };
            checked += 1;
            if !root.join(&path).exists() {
                missing.push(format!("{}:{line}: `{span}`", doc.strip_prefix(&root).unwrap().display()));
            }
        }
    }
    assert!(missing.is_empty(), "the docs name paths that do not exist:\n{}", missing.join("\n"));
    assert!(checked >= 30, "only {checked} paths found in the docs: is the check blind?");
}

#[test]
fn every_source_file_in_the_code_map_exists() {
    let root = repo_root();
    let sources: Vec<String> = ["xtask/src", "xtask/tests", "installer/src", "installer/tests", "installer/gui/src"]
        .iter()
        .flat_map(|dir| walkdir::WalkDir::new(root.join(dir)).into_iter().flatten())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(&root).unwrap().display().to_string())
        .collect();
    let text = fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut missing = Vec::new();
    for (line, span) in code_spans(&text) {
        let named = span.trim_end_matches('/');
        if named.ends_with(".rs")
            && !named.contains(' ')
            && !sources.iter().any(|s| s == named || s.ends_with(&format!("/{named}")))
        {
            missing.push(format!("ARCHITECTURE.md:{line}: `{span}`"));
        }
    }
    assert!(missing.is_empty(), "the code map names files that do not exist:\n{}", missing.join("\n"));
}

#[test]
fn the_checks_see_a_missing_path() {
    // The checks themselves: a made-up path is caught, a placeholder is not taken for one.
    let top = vec!["xtask".to_owned(), "packages.list".to_owned()];
    assert_eq!(as_repo_path("xtask/src/nothing.rs", &top).as_deref(), Some("xtask/src/nothing.rs"));
    assert_eq!(as_repo_path("packages.list", &top).as_deref(), Some("packages.list"));
    assert_eq!(as_repo_path("xtask/tests/golden/*", &top), None);
    assert_eq!(as_repo_path("cargo xtask iso", &top), None);
    assert_eq!(as_repo_path("dist/<name>.iso", &top), None);
    assert!(!repo_root().join("xtask/src/nothing.rs").exists());
}

/// The Rust sources of the workspace's binaries and libraries (not their tests).
fn source_files(root: &Path) -> Vec<PathBuf> {
    ["xtask/src", "installer/src", "installer/gui/src"]
        .iter()
        .flat_map(|dir| walkdir::WalkDir::new(root.join(dir)).into_iter().flatten())
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "rs"))
        .map(|e| e.into_path())
        .collect()
}

#[test]
fn every_module_says_what_it_is() {
    let root = repo_root();
    let files = source_files(&root);
    let undocumented: Vec<String> = files
        .iter()
        .filter(|path| !fs::read_to_string(path).unwrap().trim_start().starts_with("//!"))
        .map(|path| path.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(
        undocumented.is_empty(),
        "these modules do not open with a `//!` comment saying what they are:\n{}",
        undocumented.join("\n")
    );
    assert!(files.len() >= 40, "only {} source files found: is the check blind?", files.len());
}

#[test]
fn every_xtask_module_is_in_the_code_map() {
    let root = repo_root();
    let map = fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let named: Vec<String> = code_spans(&map).into_iter().map(|(_, span)| span).collect();
    let src = root.join("xtask/src");
    let missing: Vec<String> = walkdir::WalkDir::new(&src)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && e.file_name() != "main.rs")
        .map(|e| e.path().strip_prefix(&src).unwrap().display().to_string())
        // A folder's module file (`stages.rs`) is its folder's entry (`stages/`).
        .filter(|rel| !(rel.ends_with(".rs") && src.join(rel.trim_end_matches(".rs")).is_dir()))
        .filter(|rel| !named.iter().any(|span| span == rel))
        .collect();
    assert!(missing.is_empty(), "ARCHITECTURE.md's code map leaves out xtask/src/ files:\n{}", missing.join("\n"));
}

/// `cargo xtask [global flags] <command> [words]` as written in a code span or code block line.
fn xtask_invocations(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut found = Vec::new();
    for (index, line) in text.lines().enumerate() {
        for part in line.split("cargo xtask").skip(1) {
            let words: Vec<String> = part
                .split(['`', '#', ';', '|', ')', '&'])
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            if !words.is_empty() {
                found.push((index + 1, words));
            }
        }
    }
    found
}

/// The subcommands and flags `--help` lists.
fn help_words(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "xtask {args:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_commands_in_the_readme_are_the_ones_help_lists() {
    let root = repo_root();
    let top = help_words(&[]);
    let commands: Vec<String> = top
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect();
    assert!(commands.iter().any(|c| c == "iso"), "no `iso` in --help: {top}");
    let mut wrong = Vec::new();
    let mut checked = 0;
    for doc in ["README.md", "ARCHITECTURE.md", "BENCHMARKS.md"] {
        let text = fs::read_to_string(root.join(doc)).unwrap();
        for (line, words) in xtask_invocations(&text) {
            // Global flags may come first; the first other word is the command.
            let mut i = 0;
            while i < words.len() && words[i].starts_with("--") {
                let takes_value = [
                    "--engine",
                    "--base",
                    "--builder-image",
                    "--cache-dir",
                    "--project",
                    "--version-suffix",
                    "--payload",
                    "--release-tag",
                    "--color",
                ]
                .contains(&words[i].as_str());
                i += if takes_value && !words[i].contains('=') { 2 } else { 1 };
            }
            let Some(command) = words.get(i) else { continue };
            if !command.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                continue; // prose such as "cargo xtask's"
            }
            checked += 1;
            if !commands.contains(command) {
                wrong.push(format!("{doc}:{line}: `cargo xtask {command}` is not a command of --help"));
                continue;
            }
            let help = format!("{}{}", help_words(&[command]), top);
            for flag in words.iter().filter(|w| w.starts_with("--")) {
                let flag = flag.split('=').next().unwrap();
                if !help.contains(&format!("{flag} "))
                    && !help.contains(&format!("{flag}\n"))
                    && !help.contains(&format!("{flag},"))
                {
                    wrong.push(format!("{doc}:{line}: `{flag}` is not an option of `cargo xtask {command} --help`"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "the docs name commands or options xtask does not have:\n{}", wrong.join("\n"));
    assert!(checked >= 20, "only {checked} commands found in the docs: is the check blind?");
}

/// The systemd credential names a first-boot image reads (`credential("...")` in the
/// provisioning program), each short enough for QEMU's fw_cfg: its file names take 55
/// characters, and `opt/io.systemd.credentials/` is 27 of them.
fn credential_names(program: &str) -> Vec<String> {
    program
        .match_indices("credential(\"")
        .map(|(at, m)| program[at + m.len()..].split('"').next().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn every_credential_name_fits_qemu_s_fw_cfg() {
    let program = fs::read_to_string(repo_root().join("overlay/usr/lib/truthdb/provision")).unwrap();
    let names = credential_names(&program);
    assert!(names.len() >= 5, "{names:?}");
    let too_long: Vec<&String> = names.iter().filter(|n| "opt/io.systemd.credentials/".len() + n.len() > 55).collect();
    assert!(too_long.is_empty(), "fw_cfg cannot pass these credentials (55 characters at most): {too_long:?}");
    // The check itself sees a name that is too long.
    assert_eq!(credential_names("credential(\"truthdb.admin.ssh_authorized_keys\")").len(), 1);
    assert!("opt/io.systemd.credentials/truthdb.admin.ssh_authorized_keys".len() > 55);
}
