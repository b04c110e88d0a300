//! Golden test of `cargo xtask config`: the repository's inputs render to exactly the tree in
//! `tests/golden/config/` (paths, contents, symlink targets, executable bits). After an
//! intended change, refresh it with `UPDATE_GOLDEN=1 cargo test -p xtask --test render` and
//! review the diff: it is what live-build will get.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{ProjectCopy, repo_root, stderr};

/// (relative path, kind and content) for every entry; `x` marks executables.
fn describe(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir).min_depth(1).sort_by_file_name() {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(dir).unwrap().display().to_string();
        let meta = entry.path().symlink_metadata().unwrap();
        let what = if meta.file_type().is_symlink() {
            format!("symlink -> {}", fs::read_link(entry.path()).unwrap().display())
        } else if meta.is_dir() {
            "dir".to_owned()
        } else {
            let exec = if meta.permissions().mode() & 0o111 != 0 { "x " } else { "" };
            format!("{exec}{}", String::from_utf8_lossy(&fs::read(entry.path()).unwrap()))
        };
        out.push((rel, what));
    }
    out
}

fn render_into(out: &Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_xtask")).args(["config", "--out"]).arg(out).output().unwrap();
    assert!(status.status.success(), "{}", stderr(&status));
}

#[test]
fn repository_config_matches_golden_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("config");
    render_into(&out);
    let golden = repo_root().join("xtask/tests/golden/config");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let before = if golden.exists() { describe(&golden) } else { Vec::new() };
        let _ = fs::remove_dir_all(&golden);
        fs::create_dir_all(golden.parent().unwrap()).unwrap();
        assert!(Command::new("cp").arg("-a").arg(&out).arg(&golden).status().unwrap().success());
        // Like a check mode that fixes what it finds: a refresh that changed something is not a
        // pass, so a CI run that sets UPDATE_GOLDEN by mistake still fails on a stale tree.
        assert!(
            before == describe(&golden),
            "golden files in {} were out of date and have been rewritten: review `git diff`, then run again \
             without UPDATE_GOLDEN",
            golden.display()
        );
        return;
    }
    let (actual, expected) = (describe(&out), describe(&golden));
    for ((a_path, a), (e_path, e)) in actual.iter().zip(expected.iter()) {
        assert_eq!(a_path, e_path, "file sets differ (UPDATE_GOLDEN=1 to refresh after an intended change)");
        assert_eq!(a, e, "{a_path} differs from the golden file (UPDATE_GOLDEN=1 to refresh)");
    }
    assert_eq!(actual.len(), expected.len(), "file sets differ (UPDATE_GOLDEN=1 to refresh)");
}

#[test]
fn rendering_is_pure() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    render_into(&a);
    render_into(&b);
    assert_eq!(describe(&a), describe(&b));
}

#[test]
fn manifest_values_reach_the_live_build_options() {
    let project = ProjectCopy::new();
    let manifest = fs::read_to_string(project.path("lb-config/appliance.toml")).unwrap();
    project.write(
        "lb-config/appliance.toml",
        &manifest
            .replace("http://deb.debian.org/debian\"", "http://mirror.example/debian\"")
            .replace("menu_timeout_seconds = 1", "menu_timeout_seconds = 4"),
    );
    project.write(
        "Cargo.toml",
        &fs::read_to_string(project.path("Cargo.toml")).unwrap().replace("version = \"", "version = \"9.9.9-test"),
    );
    let out = project.path("rendered");
    let result = project.xtask(&["config", "--out", out.to_str().unwrap()]);
    assert!(result.status.success(), "{}", stderr(&result));
    let auto = fs::read_to_string(out.join("auto/config")).unwrap();
    assert!(auto.contains("--mirror-chroot http://mirror.example/debian "), "{auto}");
    assert!(auto.contains("--mirror-chroot-security http://deb.debian.org/debian-security "), "{auto}");
    assert!(auto.contains("--image-name truthdb-os-9.9.9-test"), "{auto}");
    assert!(fs::read_to_string(out.join("config/bootloaders/isolinux/isolinux.cfg")).unwrap().contains("timeout 40"));
    assert!(fs::read_to_string(out.join("config/bootloaders/grub-pc/config.cfg")).unwrap().contains("set timeout=4"));
    let release = fs::read_to_string(out.join("config/includes.chroot/etc/os-release")).unwrap();
    assert!(release.contains("IMAGE_VERSION=9.9.9-test"), "{release}");
}

#[test]
fn overlay_modes_and_symlinks_are_kept() {
    let project = ProjectCopy::new();
    let overlay = project.path("overlay/usr/local/sbin");
    fs::create_dir_all(&overlay).unwrap();
    fs::write(overlay.join("secret-tool"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(overlay.join("secret-tool"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("secret-tool", overlay.join("alias")).unwrap();
    let out = project.path("rendered");
    let result = project.xtask(&["config", "--out", out.to_str().unwrap()]);
    assert!(result.status.success(), "{}", stderr(&result));
    let copied = out.join("config/includes.chroot/usr/local/sbin");
    assert_eq!(fs::metadata(copied.join("secret-tool")).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(fs::read_link(copied.join("alias")).unwrap(), Path::new("secret-tool"));
}

#[test]
fn an_overlay_symlink_leading_out_of_the_tree_is_never_written_through() {
    let project = ProjectCopy::new();
    let outside = tempfile::tempdir().unwrap();
    // The render writes usr/lib/truthdb/image.toml; with overlay/usr a link to a host
    // directory, following it would write on the host.
    let usr = project.path("overlay/usr");
    let _ = fs::remove_dir_all(&usr);
    std::os::unix::fs::symlink(outside.path(), &usr).unwrap();
    let out = project.path("rendered");
    let result = project.xtask(&["config", "--out", out.to_str().unwrap()]);
    assert!(!result.status.success(), "rendered through a symlink to {}", outside.path().display());
    let msg = stderr(&result);
    assert!(msg.contains("symlink") && msg.contains("usr"), "{msg}");
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0, "files were written outside the tree");
    assert!(!out.exists(), "a half-rendered tree was left");
}

#[test]
fn the_truthdb_profile_renders_its_repository_ports_data_partition_and_configure() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("config");
    let rendered = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["--payload", "truthdb", "config", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(rendered.status.success(), "{}", stderr(&rendered));
    let read = |rel: &str| fs::read_to_string(out.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    // TruthDB's repository, as live-build's own archive files, kept in the image.
    for suffix in ["chroot", "binary"] {
        let list = read(&format!("config/archives/truthdb.list.{suffix}"));
        assert_eq!(list, "deb https://truthdb.github.io/apt trixie main\n");
        let key = read(&format!("config/archives/truthdb.key.{suffix}"));
        assert_eq!(key, fs::read_to_string(repo_root().join("lb-config/apt-keys/truthdb.asc")).unwrap());
    }
    let packages = read("config/package-lists/appliance.list.chroot");
    for package in ["truthdb-server", "truthdb-cli", "nftables"] {
        assert!(packages.lines().any(|l| l == package), "{package} not in the package list:\n{packages}");
    }
    assert!(!packages.lines().any(|l| l == "postgresql"), "PostgreSQL in a TruthDB image:\n{packages}");
    let firewall = read("config/includes.chroot/etc/nftables.conf");
    assert!(firewall.contains("tcp dport { 22, 9623 } accept"), "{firewall}");
    assert!(!firewall.contains("5432"), "{firewall}");
    let spec = read("config/includes.chroot/usr/lib/truthdb/image.toml");
    for line in [
        "services = [\"truthdb.service\", \"ssh.service\", \"nftables.service\"]",
        "data_mount = \"/var/lib/truthdb\"",
        "configure = \"/usr/lib/truthdb/payload/truthdb-configure\"",
        "min_data_gib = 12",
        "tds_port = 1433",
    ] {
        assert!(spec.contains(line), "{line} not in image.toml:\n{spec}");
    }
    let health = read("config/includes.chroot/usr/lib/truthdb/health-check");
    assert!(
        health.contains("systemctl is-active --quiet truthdb.service") && health.contains("/dev/tcp/127.0.0.1/9623")
    );
    assert!(out.join("config/includes.chroot/usr/lib/truthdb/payload/truthdb-configure").is_file());
    assert!(!out.join("payloads").exists(), "the profiles are inputs of the render, not part of the tree");
}

/// The TruthDB payload's configure program, run here on a scratch "data partition" with
/// `env`: its paths and root-only steps (user lookup, chown, systemctl) pointed at `root`.
fn run_truthdb_configure(root: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let script = fs::read_to_string(repo_root().join("overlay/usr/lib/truthdb/payload/truthdb-configure")).unwrap();
    let at = |dir: &str| root.join(dir).to_str().unwrap().to_owned();
    let data = root.join("data");
    fs::create_dir_all(&data).unwrap();
    fs::create_dir_all(root.join("units")).unwrap();
    let script = script
        .replace("conf_dir=/etc/truthdb", &format!("conf_dir={}", at("etc/truthdb")))
        .replace("nft_dir=/etc/nftables.d", &format!("nft_dir={}", at("etc/nftables.d")))
        .replace("unit_dir=/etc/systemd/system", &format!("unit_dir={}", at("units")))
        .replace("server=/usr/bin/truthdb", &format!("server={}", at("truthdb")))
        .replace("getent passwd truthdb", "true")
        .replace("chown ", ": chown ")
        .replace("systemctl enable", ": systemctl enable");
    Command::new("sh").args(["-c", &script]).env("TRUTHDB_DATA_DIR", &data).envs(env.iter().copied()).output().unwrap()
}

/// Some machines' scratch space has less than 2 GiB free: the program then refuses, naming it.
fn too_small_for_a_store(ran: &std::process::Output, root: &Path) -> bool {
    let said = stderr(ran);
    let refused = !ran.status.success() && said.contains("too small for a store");
    assert!(ran.status.success() || refused, "{said}");
    assert!(!refused || !root.join("etc/truthdb/truthdb.toml").exists());
    refused
}

#[test]
fn the_truthdb_configure_program_writes_a_config_the_server_can_parse() {
    // The store is sized from the partition's free space and the file parses as TOML with
    // the expected keys; without TDS asked for there is no TDS, no certificate, no port.
    let tmp = tempfile::tempdir().unwrap();
    let ran = run_truthdb_configure(tmp.path(), &[]);
    if too_small_for_a_store(&ran, tmp.path()) {
        return;
    }
    let etc = tmp.path().join("etc/truthdb");
    let conf = fs::read_to_string(etc.join("truthdb.toml")).unwrap();
    let parsed: toml::Table = toml::from_str(&conf).unwrap();
    assert_eq!(parsed["network"]["port"].as_integer(), Some(9623));
    assert_eq!(parsed["storage"]["path"].as_str(), Some("truth.db"));
    let size = parsed["storage"]["size_gib"].as_integer().unwrap();
    assert!(size >= 1, "{conf}");
    assert!(!parsed.contains_key("tds"), "{conf}");
    assert!(!etc.join("tds.key").exists() && !tmp.path().join("etc/nftables.d").exists());
    let mode = fs::metadata(etc.join("truthdb.toml")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "the config is not for every user");
    assert_eq!(fs::metadata(tmp.path().join("data")).unwrap().permissions().mode() & 0o777, 0o700);
}

#[test]
fn with_tds_the_configure_program_makes_a_certificate_opens_the_port_and_the_seed_is_forgotten() {
    let tmp = tempfile::tempdir().unwrap();
    // A password TOML must quote: a quote, a backslash, a non-ASCII letter.
    let password = r#"a "quoted" back\slash pässword"#;
    let tds = [("TRUTHDB_TDS_PORT", "1433"), ("TRUTHDB_DB_PASSWORD", password)];
    // A server without TDS (as the published 0.1.40~rc1): refused, naming the setting, before
    // any file is written.
    fs::write(tmp.path().join("truthdb"), b"\x7fELF TruthDB running").unwrap();
    let ran = run_truthdb_configure(tmp.path(), &tds);
    assert!(!ran.status.success() && stderr(&ran).contains("enables TDS (database.tds), but this truthdb-server"));
    assert!(!tmp.path().join("etc/truthdb").exists(), "nothing written");
    // One that logs its TDS listener.
    fs::write(tmp.path().join("truthdb"), b"\x7fELF TDS gateway listening on {}:{}").unwrap();
    let ran = run_truthdb_configure(tmp.path(), &tds);
    if too_small_for_a_store(&ran, tmp.path()) {
        return;
    }
    assert!(!String::from_utf8_lossy(&ran.stdout).contains("pässword") && !stderr(&ran).contains("pässword"));
    let etc = tmp.path().join("etc/truthdb");
    let conf_path = etc.join("truthdb.toml");
    let conf = fs::read_to_string(&conf_path).unwrap();
    let parsed: toml::Table = toml::from_str(&conf).unwrap();
    let tds = &parsed["tds"];
    assert_eq!((tds["enabled"].as_bool(), tds["port"].as_integer()), (Some(true), Some(1433)), "{conf}");
    assert_eq!(tds["encryption"].as_str(), Some("required"));
    assert_eq!(tds["auth"]["sa"].as_str(), Some(password), "the seed survives TOML quoting");
    let (cert, key) = (etc.join("tds.crt"), etc.join("tds.key"));
    assert_eq!(tds["tls_cert"].as_str(), cert.to_str());
    assert_eq!(tds["tls_key"].as_str(), key.to_str());
    // A real certificate for this key, and the key for the server's group only.
    let modulus = |args: &[&str]| Command::new("openssl").args(args).output().unwrap().stdout;
    let from_cert = modulus(&["x509", "-noout", "-pubkey", "-in", cert.to_str().unwrap()]);
    let from_key = modulus(&["pkey", "-pubout", "-in", key.to_str().unwrap()]);
    assert!(from_cert.starts_with(b"-----BEGIN PUBLIC KEY") && from_cert == from_key);
    assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o640);
    let nft = fs::read_to_string(tmp.path().join("etc/nftables.d/truthdb-tds.nft")).unwrap();
    assert!(nft.contains("add rule inet filter input tcp dport 1433 accept"), "{nft}");
    let unit = fs::read_to_string(tmp.path().join("units/truthdb-forget-tds-seed.service")).unwrap();
    let exec = format!("ExecStart=/usr/lib/truthdb/payload/truthdb-forget-tds-seed {} 1433", conf_path.display());
    assert!(unit.contains(&exec), "{unit}");

    // The seed's removal once TDS listens: here a listener on a free port stands for the
    // server, and the program run as the unit runs it.
    let forget = repo_root().join("overlay/usr/lib/truthdb/payload/truthdb-forget-tds-seed");
    let run_forget = |port: u16, tries: &str| {
        Command::new(&forget)
            .args([conf_path.to_str().unwrap(), &port.to_string()])
            .env("TRUTHDB_SEED_WAIT", tries)
            .output()
            .unwrap()
    };
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ran = run_forget(closed, "2");
    assert!(!ran.status.success() && stderr(&ran).contains("the seed stays"), "{}", stderr(&ran));
    assert_eq!(fs::read_to_string(&conf_path).unwrap(), conf, "nothing removed before TDS listens");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ran = run_forget(listener.local_addr().unwrap().port(), "2");
    assert!(ran.status.success(), "{}", stderr(&ran));
    let after = fs::read_to_string(&conf_path).unwrap();
    assert!(!after.contains("pässword") && !after.contains("[tds.auth]"), "{after}");
    let parsed: toml::Table = toml::from_str(&after).unwrap();
    assert_eq!(parsed["tds"]["enabled"].as_bool(), Some(true), "the rest stays: {after}");
    assert!(conf.starts_with(after.trim_end()), "only the end of the file went");
    assert_eq!(fs::metadata(&conf_path).unwrap().permissions().mode() & 0o777, 0o640);
    // A second start has nothing to do.
    assert!(run_forget(closed, "1").status.success());
}
