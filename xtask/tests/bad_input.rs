//! Bad input gets a clear error naming the file, field or package, a non-zero exit, and no
//! damage: these run the real binary on a broken copy of the project and check `dist/` and
//! the render output are untouched.

mod common;

use std::fs;

use common::{ProjectCopy, snapshot, stderr};

/// Runs `config` on the broken project; asserts failure, the expected words, and that the
/// previously rendered output is still exactly there.
fn assert_config_fails(project: &ProjectCopy, expected: &[&str]) {
    let out = project.path("rendered");
    fs::create_dir_all(out.join("auto")).unwrap();
    fs::write(out.join("auto/config"), "previous render\n").unwrap();
    let before = snapshot(&out);
    let result = project.xtask(&["config", "--out", out.to_str().unwrap()]);
    let err = stderr(&result);
    assert!(!result.status.success(), "expected failure, got success:\n{err}");
    for word in expected {
        assert!(err.contains(word), "expected {word:?} in:\n{err}");
    }
    assert_eq!(snapshot(&out), before, "a failed render changed its output directory");
}

#[test]
fn malformed_manifest_names_file_and_line() {
    let p = ProjectCopy::new();
    p.append("lb-config/appliance.toml", "\n[iso\n");
    assert_config_fails(&p, &["appliance.toml", "line"]);
}

#[test]
fn unknown_manifest_key_is_named() {
    let p = ProjectCopy::new();
    p.append("lb-config/appliance.toml", "\n[extra]\nkernel = \"mine\"\n");
    assert_config_fails(&p, &["appliance.toml", "unknown field `extra`"]);
}

#[test]
fn invalid_manifest_value_names_the_field() {
    let p = ProjectCopy::new();
    let text = fs::read_to_string(p.path("lb-config/appliance.toml")).unwrap();
    p.write("lb-config/appliance.toml", &text.replace("http://deb.debian.org/debian-security", "deb.debian.org"));
    assert_config_fails(&p, &["appliance.toml", "mirrors.security"]);
}

#[test]
fn missing_overlay_is_named() {
    let p = ProjectCopy::new();
    fs::remove_dir_all(p.path("overlay")).unwrap();
    assert_config_fails(&p, &["overlay", "missing"]);
}

#[test]
fn missing_package_list_is_named() {
    let p = ProjectCopy::new();
    fs::remove_file(p.path("packages.list")).unwrap();
    assert_config_fails(&p, &["packages.list"]);
}

#[test]
fn empty_package_list_is_refused() {
    let p = ProjectCopy::new();
    p.write("packages.list", "# nothing here\n\n");
    assert_config_fails(&p, &["packages.list", "no packages"]);
}

#[test]
fn invalid_package_name_names_file_and_line() {
    let p = ProjectCopy::new();
    let line = p.append_line("packages.list", "PostgreSQL");
    assert_config_fails(&p, &["packages.list", &format!("line {line}"), "PostgreSQL"]);
}

#[test]
fn hook_live_build_would_ignore_is_refused() {
    let p = ProjectCopy::new();
    p.write("hooks/0200-setup.sh", "#!/bin/sh\n");
    assert_config_fails(&p, &["0200-setup.sh", "*.hook.chroot"]);
}

#[test]
fn template_typo_names_the_template() {
    let p = ProjectCopy::new();
    p.append("lb-config/auto/config.j2", "# {{ no_such_value }}\n");
    assert_config_fails(&p, &["lb-config/auto/config.j2", "no_such_value"]);
}

#[test]
fn overlay_file_colliding_with_a_rendered_file_is_refused() {
    let p = ProjectCopy::new();
    p.write("overlay/etc/os-release", "mine\n");
    assert_config_fails(&p, &["overlay", "os-release"]);
}

#[test]
fn image_files_outside_overlay_are_refused_naming_their_home() {
    let p = ProjectCopy::new();
    p.write("lb-config/config/includes.chroot/etc/motd", "hello\n");
    assert_config_fails(&p, &["lb-config/config/includes.chroot", "overlay/"]);
    let p = ProjectCopy::new();
    p.write("lb-config/config/hooks/normal/0001-x.hook.chroot", "#!/bin/sh\n");
    assert_config_fails(&p, &["lb-config/config/hooks", "hooks/"]);
}

#[test]
fn broken_manifest_leaves_dist_untouched() {
    let p = ProjectCopy::new();
    let dist = p.path("dist");
    fs::create_dir_all(&dist).unwrap();
    fs::write(dist.join("SHA256SUMS"), "previous release\n").unwrap();
    let before = snapshot(&dist);
    p.append("lb-config/appliance.toml", "\nsuite = \"sid\"\n");
    let result = p.xtask(&["iso", "--dist", dist.to_str().unwrap()]);
    assert!(!result.status.success());
    assert!(stderr(&result).contains("appliance.toml"), "{}", stderr(&result));
    assert_eq!(snapshot(&dist), before);
}

#[test]
fn bad_kernel_pin_names_file_and_field() {
    let p = ProjectCopy::new();
    let text = fs::read_to_string(p.path("kernel/kernel.toml")).unwrap();
    p.write("kernel/kernel.toml", &text.replace("local_version = \"-truthdb\"", "local_version = \"truthdb\""));
    assert_config_fails(&p, &["kernel/kernel.toml", "build.local_version"]);
}

#[test]
fn disk_image_config_without_wipe_is_refused_before_anything_is_built() {
    let p = ProjectCopy::new();
    p.write(
        "install.toml",
        "hostname = \"db1\"\n[admin]\nuser = \"dba\"\nssh_authorized_keys = [\"ssh-ed25519 AAAA x\"]\n\
         [database]\nadmin_password = \"a long enough password\"\n",
    );
    let output = p.path("disk.raw");
    let out =
        p.xtask(&["disk", "--config", p.path("install.toml").to_str().unwrap(), "--output", output.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(!out.status.success(), "a config without wipe = true was accepted:\n{err}");
    assert!(err.contains("install.toml") && err.contains("`wipe = true` is required"), "{err}");
    assert!(!output.exists() && !p.path("disk.raw.partial").exists(), "an image was written");
    assert!(!p.path("dist").exists(), "an ISO build was started");
}

#[test]
fn a_second_run_on_the_same_work_directory_fails_clearly_with_no_wait() {
    let project = ProjectCopy::new();
    let lock = project.path("target/truthdb-os/.lock");
    fs::create_dir_all(lock.parent().unwrap()).unwrap();
    fs::write(&lock, "").unwrap();
    // Another run: util-linux's flock holds the same lock as xtask takes.
    let mut other = std::process::Command::new("flock").arg(&lock).args(["sleep", "60"]).spawn().unwrap();
    let held = || !std::process::Command::new("flock").arg("-n").arg(&lock).arg("true").status().unwrap().success();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !held() {
        assert!(std::time::Instant::now() < deadline, "flock never took the lock");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let result = project.xtask(&["--no-wait", "boot-test", "--iso", "/nonexistent.iso"]);
    other.kill().unwrap();
    other.wait().unwrap();
    let err = stderr(&result);
    assert!(!result.status.success(), "ran beside another run: {err}");
    assert!(err.contains("is in use by another run") && err.contains(".lock"), "{err}");
}

#[test]
fn a_plain_file_beside_its_template_is_refused() {
    // Which one would live-build get? Today's render let the template win silently.
    let p = ProjectCopy::new();
    p.write("lb-config/auto/config", "#!/bin/sh\nlb config noauto --distribution sid\n");
    assert_config_fails(&p, &["lb-config/auto/config", "lb-config/auto/config.j2"]);
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    let p = ProjectCopy::new();
    // clap's own, and the ones xtask finds in flags clap cannot judge.
    for args in [
        &["iso", "--no-such-flag"][..],
        &["--version-suffix", "Nightly!", "config"],
        &["--engine", "docker", "config"],
        &["--container", "vm"],
        &["--release-tag", "0.2.0", "config"],
        &["--release-tag", "v0.2.0", "--version-suffix", "nightly.1", "config"],
        &["--payload", "no-such-profile", "config"],
    ] {
        let out = p.xtask(args);
        assert_eq!(out.status.code(), Some(2), "xtask {args:?}: {}", stderr(&out));
    }
    let out = p.xtask(&["verify", p.path("no-such-dir").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "a failed verify: {}", stderr(&out));
}

#[test]
fn a_release_tag_gives_the_version_as_the_organisation_s_tooling_does() {
    let p = ProjectCopy::new();
    let out =
        p.xtask(&["--release-tag", "v0.2.0-rc.1", "release", "--tag", "v0.2.0-rc.1", "--check-only", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("tag v0.2.0-rc.1 matches version 0.2.0-rc.1 (pre-release)"));
    // Without it, the tag must still be the workspace version.
    let out = p.xtask(&["release", "--tag", "v0.2.0-rc.1", "--check-only", "--dry-run"]);
    assert!(!out.status.success() && stderr(&out).contains("does not match the workspace version"), "{}", stderr(&out));
    let out = p.xtask(&["--release-tag", "v0.2", "config"]);
    assert!(stderr(&out).contains("--release-tag") && stderr(&out).contains("vMAJOR.MINOR.PATCH"), "{}", stderr(&out));
}

#[test]
fn verify_json_reports_a_failure_as_json_too() {
    let p = ProjectCopy::new();
    let out = p.xtask(&["verify", "--json", p.path("no-such-dir").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(json["ok"], false);
    assert!(json["error"].as_str().unwrap().contains("no-such-dir"), "{json}");
}

#[test]
fn doctor_json_lists_every_tool() {
    let p = ProjectCopy::new();
    let out = p.xtask(&["doctor", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let tools = json["tools"].as_array().unwrap();
    assert!(tools.iter().any(|t| t["probe"] == "debootstrap" && t["present"].is_boolean()), "{json}");
    assert!(tools.len() >= 10);
}

#[test]
fn a_bad_apt_repository_is_named_by_its_field_or_key_file() {
    let repo = |url: &str, key: &str| {
        format!(
            "\n[[apt_repositories]]\nname = \"vendor\"\nurl = \"{url}\"\nsuite = \"trixie\"\ncomponents = [\"main\"]\n\
             key = \"{key}\"\n"
        )
    };
    let p = ProjectCopy::new();
    p.append("lb-config/appliance.toml", &repo("ftp://vendor.example/apt", "apt-keys/vendor.asc"));
    assert_config_fails(&p, &["appliance.toml", "apt_repositories[0].url"]);
    let p = ProjectCopy::new();
    p.append("lb-config/appliance.toml", &repo("https://vendor.example/apt", "../../etc/passwd"));
    assert_config_fails(&p, &["apt_repositories[0].key", "inside lb-config/"]);
    let p = ProjectCopy::new();
    p.append("lb-config/appliance.toml", &repo("https://vendor.example/apt", "apt-keys/vendor.asc"));
    assert_config_fails(&p, &["apt-keys/vendor.asc"]);
    p.write("lb-config/apt-keys/vendor.asc", "not a key\n");
    assert_config_fails(&p, &["lb-config/apt-keys/vendor.asc", "not an armored OpenPGP public key"]);
}

/// A package lock for the project as it is now (its `[inputs]` from `cache-keys --lock-inputs`), holding
/// the one package `name version (amd64)` at `url`.
fn write_lock(p: &ProjectCopy, name: &str, version: &str, url: &str) {
    let keys = common::stdout(&p.xtask(&["cache-keys", "--lock-inputs"]));
    let inputs: String = keys
        .lines()
        .map(|l| {
            let (name, digest) = l.split_once('=').unwrap();
            format!("{name:?} = {digest:?}\n")
        })
        .collect();
    assert!(inputs.contains("config/package-lists"), "cache-keys printed no lock inputs:\n{keys}");
    let sha = "0".repeat(64);
    p.write(
        "lb-config/packages.lock",
        &format!(
            "version = 1\nsnapshot_time = \"20261130T002233Z\"\n\n[inputs]\n{inputs}\n[[index]]\n\
             url = \"http://deb.debian.org/debian/dists/trixie/InRelease\"\nsha256 = \"{sha}\"\nsize = 1\n\n\
             [[package]]\nname = \"{name}\"\nversion = \"{version}\"\narchitecture = \"amd64\"\nurl = \"{url}\"\n\
             sha256 = \"{sha}\"\nsize = 1\n"
        ),
    );
}

/// Runs `iso` into a `dist/` holding a previous release; asserts it fails with `expected` and
/// leaves `dist/` as it was.
fn assert_iso_fails_leaving_dist(p: &ProjectCopy, expected: &[&str]) {
    let dist = p.path("dist");
    fs::create_dir_all(&dist).unwrap();
    fs::write(dist.join("SHA256SUMS"), "previous release\n").unwrap();
    let before = snapshot(&dist);
    let result = p.xtask(&["iso", "--dist", dist.to_str().unwrap()]);
    let err = stderr(&result);
    assert!(!result.status.success(), "iso succeeded:\n{err}");
    for word in expected {
        assert!(err.contains(word), "expected {word:?} in:\n{err}");
    }
    assert_eq!(snapshot(&dist), before, "a refused build changed dist/");
}

#[test]
fn a_stale_package_lock_stops_the_build_naming_what_changed() {
    let p = ProjectCopy::new();
    let url = "http://deb.debian.org/debian/pool/main/b/bash/bash_5.2.37-2+b5_amd64.deb";
    write_lock(&p, "bash", "5.2.37-2+b5", url);
    let fresh = p.xtask(&["lock", "--check"]);
    assert!(fresh.status.success(), "{}", stderr(&fresh));
    assert!(common::stdout(&fresh).contains("fresh: "), "{}", common::stdout(&fresh));

    p.append_line("packages.list", "hello");
    let stale = p.xtask(&["lock", "--check"]);
    assert_eq!(stale.status.code(), Some(1), "{}", stderr(&stale));
    assert!(stderr(&stale).contains("packages.lock is stale: config/package-lists changed"), "{}", stderr(&stale));
    assert_iso_fails_leaving_dist(&p, &["packages.lock is stale: config/package-lists changed", "cargo xtask lock"]);
}

#[test]
fn a_locked_version_no_source_has_stops_the_build_naming_the_package() {
    let p = ProjectCopy::new();
    // A version edited without its URL: the lock contradicts itself.
    write_lock(&p, "bash", "9.9.9-1", "http://deb.debian.org/debian/pool/main/b/bash/bash_5.2.37-2+b5_amd64.deb");
    assert_iso_fails_leaving_dist(
        &p,
        &["packages.lock", "package bash 9.9.9-1 (amd64): its url names bash_5.2.37-2+b5_amd64.deb"],
    );
    // Both edited: a version the archive does not have. Refused before anything is built.
    let url = "http://deb.debian.org/debian/pool/main/b/bash/bash_9.9.9-1_amd64.deb";
    write_lock(&p, "bash", "9.9.9-1", url);
    assert_iso_fails_leaving_dist(
        &p,
        &["packages.lock: bash 9.9.9-1 (amd64) is in no configured source", url, "snapshot.debian.org: not configured"],
    );
}
