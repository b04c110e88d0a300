//! `packages.list`: the Debian packages installed into the image, one per line.
//!
//! Syntax errors are caught here, with file and line; whether a name exists in the archive is
//! asked of the build root's apt (see `build_root::check_packages_exist`), which knows the suite.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::project::appliance::is_debian_name;

/// A package named in `packages.list`, with where it was named (for error messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageEntry {
    pub name: String,
    pub line: usize,
}

#[derive(Clone, Debug)]
pub struct PackageList {
    pub path: PathBuf,
    pub entries: Vec<PackageEntry>,
    /// The payload's packages, named in the manifest (`payload.packages`).
    pub payload: Vec<String>,
    /// Where the payload's packages were named, for error messages.
    pub payload_source: String,
}

/// What live-build's conditional lines (`#if ARCHITECTURES amd64`, `#nif DISTRIBUTION sid`)
/// are tested against: the build's own values, from the manifest.
#[derive(Clone, Debug)]
pub struct Conditions {
    pub architecture: String,
    pub distribution: String,
}

impl Conditions {
    fn value_of(&self, variable: &str) -> Option<&str> {
        match variable {
            "ARCHITECTURES" | "ARCHITECTURE" => Some(&self.architecture),
            "DISTRIBUTION" => Some(&self.distribution),
            "MODE" => Some("debian"),
            _ => None,
        }
    }
}

impl PackageList {
    pub fn load(path: &Path, conditions: &Conditions) -> Result<PackageList> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading package list {}", path.display()))?;
        let entries = parse(&text, conditions).with_context(|| format!("in package list {}", path.display()))?;
        Ok(PackageList { path: path.to_owned(), entries, payload: Vec::new(), payload_source: String::new() })
    }

    /// Adds the payload's packages (`payload.packages` of the manifest at `source`).
    pub fn with_payload(mut self, names: &[String], source: &Path) -> Result<PackageList> {
        for name in names {
            if let Some(entry) = self.entries.iter().find(|e| &e.name == name) {
                bail!(
                    "{}: field `payload.packages`: {name:?} is also listed in {}:{}; list it once",
                    source.display(),
                    self.path.display(),
                    entry.line
                );
            }
        }
        self.payload = names.to_vec();
        self.payload_source = source.display().to_string();
        Ok(self)
    }

    /// Every package: packages.list's, then the payload's.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str()).chain(self.payload.iter().map(String::as_str))
    }

    /// Where `name` was listed: `file:line`, or the manifest's field.
    pub fn location(&self, name: &str) -> String {
        match self.entries.iter().find(|e| e.name == name) {
            Some(e) => format!("{}:{}", self.path.display(), e.line),
            None if self.payload.iter().any(|p| p == name) => {
                format!("{} field `payload.packages`", self.payload_source)
            }
            None => self.path.display().to_string(),
        }
    }
}

/// Blank lines and `#` comments are ignored; every other line is exactly one package name.
/// live-build's conditionals are honoured as live-build reads them: `#if VARIABLE value...`
/// (and `#nif`) up to `#endif` keep their lines when the build's value is (is not) one of the
/// listed ones; they do not nest. Other directives (`#include`) are refused, not mistaken for
/// comments.
pub fn parse(text: &str, conditions: &Conditions) -> Result<Vec<PackageEntry>> {
    let mut entries: Vec<PackageEntry> = Vec::new();
    // The open conditional: (its line, whether its lines are kept).
    let mut open: Option<(usize, bool)> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        let directive = trimmed.split_whitespace().next().unwrap_or("");
        match directive {
            "#if" | "#nif" => {
                if let Some((start, _)) = open {
                    bail!("line {line}: {directive} inside the #if of line {start} (live-build does not nest them)");
                }
                let mut words = trimmed.split_whitespace().skip(1);
                let variable = words.next().with_context(|| format!("line {line}: {directive} names no variable"))?;
                let value = conditions.value_of(variable).with_context(|| {
                    format!(
                        "line {line}: {directive} {variable}: only ARCHITECTURES, DISTRIBUTION and MODE can be tested \
                         here"
                    )
                })?;
                let listed: Vec<&str> = words.collect();
                if listed.is_empty() {
                    bail!("line {line}: {directive} {variable} lists no values");
                }
                let matches = value.split_whitespace().any(|v| listed.contains(&v));
                open = Some((line, matches == (directive == "#if")));
                continue;
            }
            "#endif" => {
                if open.take().is_none() {
                    bail!("line {line}: #endif without #if");
                }
                continue;
            }
            "#include" => bail!("line {line}: live-build's #include is not supported: list the packages here"),
            _ => {}
        }
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() || open.is_some_and(|(_, kept)| !kept) {
            continue;
        }
        if content.contains(char::is_whitespace) {
            bail!("line {line}: {content:?} holds more than one name (one package per line)");
        }
        if !is_debian_name(content) {
            bail!("line {line}: {content:?} is not a valid Debian package name");
        }
        if let Some(first) = entries.iter().find(|e| e.name == content) {
            bail!("line {line}: package {content:?} is already listed on line {}", first.line);
        }
        entries.push(PackageEntry { name: content.to_owned(), line });
    }
    if let Some((start, _)) = open {
        bail!("line {start}: this #if has no #endif");
    }
    if entries.is_empty() {
        bail!("no packages listed (live-build needs at least one)");
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amd64_trixie() -> Conditions {
        Conditions { architecture: "amd64".into(), distribution: "trixie".into() }
    }

    fn parse(text: &str) -> Result<Vec<PackageEntry>> {
        super::parse(text, &amd64_trixie())
    }

    fn names(text: &str) -> Vec<String> {
        parse(text).unwrap().into_iter().map(|e| e.name).collect()
    }

    #[test]
    fn live_build_conditionals_are_honoured() {
        let text = "curl\n#if ARCHITECTURES i386 arm64\nlib32-only\n#endif\n#if ARCHITECTURES amd64\nintel-microcode\n#endif\n\
                    #nif DISTRIBUTION sid\nstable-only\n#endif\n#if DISTRIBUTION bookworm\nold-only\n#endif\n";
        assert_eq!(names(text), ["curl", "intel-microcode", "stable-only"]);
    }

    #[test]
    fn broken_conditionals_are_refused_by_line() {
        for (text, expected) in [
            ("curl\n#if ARCHITECTURES amd64\nwget\n", "line 2: this #if has no #endif"),
            ("curl\n#endif\n", "line 2: #endif without #if"),
            ("#if ARCHITECTURES amd64\n#if DISTRIBUTION trixie\n#endif\n#endif\n", "line 2: #if inside"),
            ("#if FLAVOURS amd64\ncurl\n#endif\n", "line 1: #if FLAVOURS: only"),
            ("curl\n#include other.list\n", "line 2: live-build's #include is not supported"),
        ] {
            let msg = format!("{:#}", parse(text).unwrap_err());
            assert!(msg.contains(expected), "expected {expected:?} in {msg:?}");
        }
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let entries = parse("# header\n\nopenssh-server  # remote admin\n  curl\n").unwrap();
        assert_eq!(
            entries,
            [PackageEntry { name: "openssh-server".into(), line: 3 }, PackageEntry { name: "curl".into(), line: 4 }]
        );
    }

    #[test]
    fn bad_lines_are_reported_with_their_line_number() {
        for (text, expected) in [
            ("curl\nOpenSSH\n", "line 2: \"OpenSSH\" is not a valid"),
            ("curl wget\n", "line 1: \"curl wget\" holds more than one"),
            ("curl\ncurl\n", "line 2: package \"curl\" is already listed on line 1"),
            ("# nothing\n\n", "no packages listed"),
        ] {
            let msg = format!("{:#}", parse(text).unwrap_err());
            assert!(msg.contains(expected), "expected {expected:?} in {msg:?}");
        }
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("packages.list");
        std::fs::write(&path, "Bad_Name\n").unwrap();
        let msg = format!("{:#}", PackageList::load(&path, &amd64_trixie()).unwrap_err());
        assert!(msg.contains("packages.list") && msg.contains("line 1"), "{msg}");
    }
}
