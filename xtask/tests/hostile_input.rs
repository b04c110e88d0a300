//! Hostile manifest values: every string of `appliance.toml` that reaches a shell script, a
//! sourced file or a boot loader config either arrives there verbatim or is refused with an
//! error naming its field. The rendered `auto/config` is really run (with `lb` replaced by a
//! stub that records its arguments) and the rendered `/etc/os-release` really sourced, in a
//! scratch directory where an injected `touch` would leave a file behind.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{ProjectCopy, stderr};

/// Pieces that mean something to sh, to os-release parsers, to sed (live-build pastes some
/// values into sed expressions) or to GRUB.
const FRAGMENTS: &[&str] = &[
    "\"",
    "'",
    "$(touch PWNED)",
    "`touch PWNED`",
    "\\",
    "\n",
    ";touch PWNED;",
    "${HOME}",
    "a b",
    "#",
    "&&",
    "|",
    "{}",
    "@",
    "\t",
];

/// (field path, how to make a value of that field from a fragment, the `lb config` option that
/// carries it if any).
type Field = (&'static str, fn(&str) -> String, Option<&'static str>);

fn fields() -> Vec<Field> {
    vec![
        ("pretty_name", |f| format!("TruthDB{f}OS"), None),
        ("iso.publisher", |f| format!("Pub{f}lisher"), Some("--iso-publisher")),
        ("iso.application", |f| format!("App{f}lication"), Some("--iso-application")),
        ("iso.volume", |f| format!("V{f}"), Some("--iso-volume")),
        ("mirrors.archive", |f| format!("http://mirror.example/deb{f}ian"), Some("--mirror-chroot")),
        ("mirrors.security", |f| format!("http://mirror.example/sec{f}urity"), Some("--mirror-chroot-security")),
        ("boot.serial_console", |f| format!("ttyS0{f},115200"), None),
        ("boot.append", |f| format!("quiet{f}x"), None),
    ]
}

fn set_field(manifest: &mut toml::Table, field: &str, value: &str) {
    let (table, key) = match field.split_once('.') {
        Some((table, key)) => {
            let entry = manifest.entry(table).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            (entry.as_table_mut().unwrap(), key)
        }
        None => (&mut *manifest, field),
    };
    let value = if field == "boot.append" {
        toml::Value::Array(vec!["boot=live".into(), value.into()])
    } else {
        toml::Value::String(value.to_owned())
    };
    table.insert(key.to_owned(), value);
}

/// Runs the rendered `auto/config` with `lb` stubbed; returns the arguments `lb` got.
fn run_auto_config(rendered: &Path, scratch: &Path) -> Vec<String> {
    let bin = scratch.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let args_file = scratch.join("lb-args");
    fs::write(bin.join("lb"), format!("#!/bin/sh\nprintf '%s\\0' \"$@\" > '{}'\n", args_file.display())).unwrap();
    fs::set_permissions(bin.join("lb"), fs::Permissions::from_mode(0o755)).unwrap();
    let work = scratch.join("work");
    fs::create_dir_all(&work).unwrap();
    let out = Command::new("sh")
        .arg(rendered.join("auto/config"))
        .current_dir(&work)
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "auto/config failed: {}", stderr(&out));
    let raw = fs::read(&args_file).expect("the lb stub ran");
    String::from_utf8(raw).unwrap().split_terminator('\0').map(str::to_owned).collect()
}

/// Sources the rendered os-release with sh, as the boot marker does; returns NAME.
fn sourced_name(rendered: &Path, scratch: &Path) -> String {
    let out = Command::new("sh")
        .args(["-c", ". \"$1\" && printf '%s' \"$NAME\"", "sh"])
        .arg(rendered.join("config/includes.chroot/etc/os-release"))
        .current_dir(scratch)
        .output()
        .unwrap();
    assert!(out.status.success(), "sourcing os-release failed: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn option_value<'a>(args: &'a [String], option: &str) -> &'a str {
    let at = args.iter().position(|a| a == option).unwrap_or_else(|| panic!("{option} not passed: {args:?}"));
    &args[at + 1]
}

#[test]
fn hostile_manifest_values_arrive_verbatim_or_are_refused_by_field() {
    let project = ProjectCopy::new();
    let original: toml::Table =
        toml::from_str(&fs::read_to_string(project.path("lb-config/appliance.toml")).unwrap()).unwrap();
    let mut accepted = 0;
    let mut failures = Vec::new();
    for (field, make, option) in fields() {
        for fragment in FRAGMENTS {
            let value = make(fragment);
            let mut manifest = original.clone();
            set_field(&mut manifest, field, &value);
            project.write("lb-config/appliance.toml", &toml::to_string(&manifest).unwrap());
            let scratch = tempfile::tempdir().unwrap();
            let rendered = scratch.path().join("rendered");
            let result = project.xtask(&["config", "--out", rendered.to_str().unwrap()]);
            if !result.status.success() {
                let msg = stderr(&result);
                if !msg.contains(&format!("`{field}`")) {
                    failures.push(format!("{field} = {value:?}: refused without naming the field: {msg}"));
                }
                continue;
            }
            accepted += 1;
            let args = run_auto_config(&rendered, scratch.path());
            let name = sourced_name(&rendered, scratch.path());
            let pwned = walkdir::WalkDir::new(scratch.path()).into_iter().flatten().any(|e| e.file_name() == "PWNED");
            if pwned {
                failures.push(format!("{field} = {value:?}: a command injected through it ran"));
            }
            let arrived = match (field, option) {
                ("pretty_name", _) => name,
                ("boot.append", _) | ("boot.serial_console", _) => option_value(&args, "--bootappend-live").to_owned(),
                ("iso.volume", _) => option_value(&args, "--iso-volume").rsplit_once(' ').unwrap().0.to_owned(),
                (_, Some(option)) => option_value(&args, option).to_owned(),
                (_, None) => unreachable!(),
            };
            let verbatim = match field {
                "boot.append" => arrived.split(' ').any(|p| p == value),
                "boot.serial_console" => arrived.ends_with(&format!("console={value}")),
                _ => arrived == value,
            };
            if !verbatim {
                failures.push(format!("{field} = {value:?} arrived as {arrived:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n"));
    // Quoting is exercised, not just refusal: plenty of the odd values are legitimate.
    assert!(accepted >= 20, "only {accepted} hostile values were accepted: is everything refused?");
}
