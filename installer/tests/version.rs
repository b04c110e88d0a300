//! The installer reports the one version of TruthDB OS: the workspace version in Cargo.toml.

use std::process::Command;

#[test]
fn version_is_the_workspace_version() {
    let cargo_toml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml")).unwrap();
    let workspace_version = cargo_toml
        .split("[workspace.package]")
        .nth(1)
        .and_then(|section| section.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .expect("workspace.package.version");
    let out = Command::new(env!("CARGO_BIN_EXE_truthdb-installer")).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("truthdb-installer {workspace_version}"));
}
