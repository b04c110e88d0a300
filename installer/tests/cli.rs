//! The real `truthdb-installer` binary, run without root: its exit status (2 for a usage
//! error, 1 for a failure) and `disks --json`.

use std::process::{Command, Output};

fn installer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_truthdb-installer")).args(args).output().unwrap()
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    for args in [&["disks", "--bogus"][..], &[], &["plan"], &["frobnicate"]] {
        let out = installer(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = installer(&["plan", "--config", "/nonexistent/install.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.starts_with("truthdb-installer: error: reading install config /nonexistent/install.toml"), "{said}");
}

#[test]
fn disks_json_is_an_array_of_every_disk_saying_whether_it_is_installable() {
    let out = installer(&["disks", "--json"]);
    if out.status.code() == Some(1) {
        // No lsblk or no /sys here: a failure, said as one.
        assert!(String::from_utf8_lossy(&out.stderr).starts_with("truthdb-installer: error: "));
        return;
    }
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    for disk in json.as_array().expect("a JSON array") {
        assert!(disk["path"].as_str().is_some_and(|p| p.starts_with("/dev/")), "{disk}");
        assert!(disk["size_bytes"].is_u64(), "{disk}");
        let installable = disk["installable"].as_bool().expect("installable");
        assert_eq!(disk["why_not"].is_null(), installable, "{disk}");
    }
}
