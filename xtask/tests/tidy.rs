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
