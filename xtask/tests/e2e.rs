//! End-to-end: the real pipeline on this machine. Needs root, the Debian mirror, QEMU and
//! most of an hour (BENCHMARKS.md), so these are `#[ignore]`d in a plain `cargo test`.
//!
//! The tests are named `e2e_NN_...` in running order and share one ISO: `e2e_01` builds it
//! into `target/truthdb-os/e2e-dist` and, when every check on it passed, records its sha256
//! beside it; the tests that need the ISO take it through [`built_iso`], which fails at once
//! ("no ISO: e2e_01 failed or did not run") rather than build another. `cargo xtask test`
//! runs each one as its own `cargo test` in that order, so a failure hides nothing after it;
//! by hand, run one with `--ignored --exact <name>`, or all with `--ignored --test-threads=1`
//! (never in parallel: they share the ISO, the caches and the machine's cores).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{ProjectCopy, kernel_epoch, repo_root, snapshot, stderr, stdout};

/// Runs xtask with its progress (stderr) shown live and its report (stdout) captured.
/// On a failure, its `error:` lines are printed again last, after the report: a CI log's
/// excerpt is its end, and the error scrolled out of it behind the report.
fn xtask(args: &[&str]) -> Output {
    eprintln!("$ xtask {}", args.join(" "));
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut progress = child.stderr.take().unwrap();
    let shown = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut kept, mut chunk) = (Vec::new(), [0u8; 8192]);
        while let Ok(n) = progress.read(&mut chunk) {
            if n == 0 {
                break;
            }
            let _ = std::io::stderr().write_all(&chunk[..n]);
            kept.extend_from_slice(&chunk[..n]);
        }
        kept
    });
    let mut out = child.wait_with_output().unwrap();
    out.stderr = shown.join().unwrap();
    eprintln!("{}", stdout(&out));
    if !out.status.success() {
        let errors: Vec<String> =
            stderr(&out).lines().skip_while(|line| !line.starts_with("error")).map(str::to_owned).collect();
        eprintln!("xtask {} failed ({}):\n{}", args.join(" "), out.status, errors.join("\n"));
    }
    out
}

/// The image's root file system, copied out of `iso` into `dir`.
fn extract_squashfs(iso: &Path, dir: &Path) -> PathBuf {
    let squashfs = dir.join("filesystem.squashfs");
    run(Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(iso)
        .args(["-extract", "/live/filesystem.squashfs"])
        .arg(&squashfs));
    squashfs
}

fn dist_dir() -> PathBuf {
    // Outside the repository's own dist/, so a developer's published image is not replaced.
    repo_root().join("target/truthdb-os/e2e-dist")
}

fn iso_name() -> String {
    format!("truthdb-os-{}-amd64.hybrid.iso", env!("CARGO_PKG_VERSION"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed:\n{}{}", stdout(&out), stderr(&out));
    out
}

fn no_mounts_below(dir: &Path) {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let leaked: Vec<&str> = mountinfo.lines().filter(|l| l.contains(&dir.display().to_string())).collect();
    assert!(leaked.is_empty(), "mounts left on the host below {}: {leaked:#?}", dir.display());
}

/// Written by `e2e_01` once the ISO it built passed every check on it: the ISO's sha256. Beside
/// `e2e-dist`, not in it (the dist file set and the release rehearsal see no stranger).
/// The package lock e2e_01 records and e2e_14 builds from (not lb-config/'s: the suite must
/// not change the work tree).
fn e2e_lock() -> PathBuf {
    repo_root().join("target/truthdb-os/e2e-packages.lock")
}

fn built_marker() -> PathBuf {
    repo_root().join("target/truthdb-os/e2e-dist.ok")
}

/// What a test that needs `e2e_01`'s work says when it is not there; `cargo xtask test`
/// reports such a test as skipped (test_suite.rs looks for these words).
const NEEDS_E2E_01: &str = "e2e_01 failed or did not run";

fn sha256_of(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut fs::File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// The ISO `e2e_01` built and checked, if it is still there unchanged; otherwise fails at
/// once (no rebuild: a later test must not stand in for the build test).
fn built_iso() -> PathBuf {
    let iso = dist_dir().join(iso_name());
    let marker = built_marker();
    let recorded = match fs::read_to_string(&marker) {
        Ok(text) => text.trim().to_owned(),
        Err(e) => panic!("no ISO: {NEEDS_E2E_01} (no {}: {e})", marker.display()),
    };
    match sha256_of(&iso) {
        Ok(sha256) if sha256 == recorded => iso,
        Ok(sha256) => panic!(
            "no ISO: {NEEDS_E2E_01} ({} has sha256 {sha256}, not the {recorded} e2e_01 recorded: it changed since)",
            iso.display()
        ),
        Err(e) => panic!("no ISO: {NEEDS_E2E_01} (cannot read {}: {e})", iso.display()),
    }
}

#[test]
#[ignore = "needs root and the Debian mirror; run by `cargo xtask test`"]
fn e2e_01_iso_build_and_publish() {
    let dist = dist_dir();
    let dist_arg = dist.to_str().unwrap();
    // First: a failure below must leave no ISO for the later tests.
    let _ = fs::remove_file(built_marker());
    let _ = fs::remove_dir_all(&dist);

    // Build for real (--force: a cached image in this dist must not stand in for a build), with
    // the generic VM images a release publishes (e2e_12 boots the qcow2), recording the package
    // lock as `cargo xtask lock` does (a fresh chroot; e2e_14 builds from the lock).
    let _ = fs::remove_file(e2e_lock());
    let lock_arg = e2e_lock().to_str().unwrap().to_owned();
    let built = xtask(&["iso", "--force", "--vm-images", "--update-lock", "--lock", &lock_arg, "--dist", dist_arg]);
    assert!(built.status.success(), "iso failed");
    check_recorded_lock(&stdout(&built), &dist);
    let mut names: Vec<String> =
        fs::read_dir(&dist).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let stem = iso_name().trim_end_matches(".hybrid.iso").to_owned();
    assert_eq!(
        names,
        [
            "DEVELOPMENT-KEY-NOT-FOR-RELEASE.asc".to_owned(),
            "SHA256SUMS".into(),
            "SHA256SUMS.sign".into(),
            "SHA512SUMS".into(),
            "SHA512SUMS.sign".into(),
            format!("{stem}.build-info.json"),
            format!("{stem}.cdx.json"),
            format!("{stem}.hybrid.iso"),
            format!("{stem}.intoto.jsonl"),
            format!("{stem}.packages"),
            format!("{stem}.packages.lock"),
            format!("{stem}.qcow2"),
            format!("{stem}.raw.zst"),
            format!("{stem}.spdx.json"),
        ]
    );
    assert!(stdout(&built).contains("NOT a release signature"));
    // The raw image decompresses to a disk with the installer's GPT (the protective MBR's
    // signature, then "EFI PART" at LBA 1), and the qcow2 is a qcow2.
    let raw = run(Command::new("sh").arg("-c").arg(format!(
        "zstd -dc '{}' | head -c 1024 | od -An -c | tr -d ' \n'",
        dist.join(format!("{stem}.raw.zst")).display()
    )));
    assert!(stdout(&raw).contains("EFIPART"), "no GPT header in the raw image: {}", stdout(&raw));
    let info = run(Command::new("qemu-img").args(["info", "--output=json"]).arg(dist.join(format!("{stem}.qcow2"))));
    assert!(stdout(&info).contains("\"format\": \"qcow2\""), "{}", stdout(&info));

    // No mount of the build may outlive it (e2e_03 checks a failed and a killed command).
    no_mounts_below(&cache_dir());
    no_mounts_below(&repo_root().join("target/truthdb-os"));

    // The image is a hybrid ISO: an ISO 9660 volume with an MBR boot signature for USB sticks.
    let iso = fs::read(dist.join(iso_name())).unwrap();
    assert_eq!(&iso[0x8001..0x8006], b"CD001", "no ISO 9660 volume descriptor");
    assert_eq!(&iso[510..512], &[0x55, 0xAA], "no MBR boot signature (not hybrid)");
    drop(iso);

    // The package manifest lists the live system, the packages we asked for and our kernel,
    // and no Debian kernel.
    let packages = fs::read_to_string(dist.join(format!("{stem}.packages"))).unwrap();
    for wanted in ["live-boot", "systemd-sysv", "iproute2", "procps"] {
        assert!(packages.lines().any(|l| l.starts_with(wanted)), "{wanted} missing from the package manifest");
    }
    let kernels: Vec<&str> = packages
        .lines()
        .filter(|l| l.starts_with("linux-image-"))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(kernels.len(), 1, "expected exactly one kernel package: {kernels:?}");
    assert!(kernels[0].starts_with("linux-image-") && kernels[0].ends_with("-truthdb"), "{kernels:?}");

    // The boot menus, as live-build filled them in: install, safe graphics, serial console,
    // verbose boot, each with the live command line and the serial console; no stock
    // "fail-safe" entry.
    let menus = tempfile::tempdir().unwrap();
    run(Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(dist.join(iso_name()))
        .args(["-extract", "/boot/grub/grub.cfg"])
        .arg(menus.path().join("grub.cfg"))
        .args(["-extract", "/isolinux/live.cfg"])
        .arg(menus.path().join("live.cfg")));
    for (menu, command_word) in [("grub.cfg", "linux"), ("live.cfg", "append")] {
        let text = fs::read_to_string(menus.path().join(menu)).unwrap();
        let lines: Vec<&str> =
            text.lines().map(str::trim).filter(|l| l.starts_with(command_word) && l.contains("boot=live")).collect();
        let labels = text.lines().filter(|l| l.contains("menuentry ") || l.contains("menu label "));
        assert!(!labels.clone().any(|l| l.contains("fail-safe")), "{menu}: the stock fail-safe entry is back:\n{text}");
        // (isolinux marks a label's hot key with `^`.)
        let plain = text.replace('^', "");
        assert!(
            plain.contains("Install TruthDB OS (safe graphics)")
                && plain.contains("Install TruthDB OS (serial console)")
                && plain.contains("Install TruthDB OS (verbose boot)"),
            "{menu}:\n{text}"
        );
        let default = lines.first().unwrap_or_else(|| panic!("{menu}: no live entry:\n{text}"));
        assert!(
            default.ends_with("console=ttyS0,115200") || default.contains("console=ttyS0,115200 findiso="),
            "{menu}: {default}"
        );
        assert!(
            lines.iter().any(|l| l.contains("console=ttyS0,115200") && l.ends_with("nomodeset")),
            "{menu}:\n{text}"
        );
        assert!(
            lines.iter().any(|l| l.contains("console=ttyS0,115200") && l.ends_with("truthdb.installer=serial")),
            "{menu}:\n{text}"
        );
        assert!(
            lines.iter().any(|l| l.contains("loglevel=7 systemd.show_status=true console=tty0 console=ttyS0,115200")),
            "{menu}:\n{text}"
        );
    }

    // Every check passed: the later tests may use this ISO.
    fs::write(built_marker(), format!("{}\n", sha256_of(&dist.join(iso_name())).unwrap())).unwrap();
}

#[test]
#[ignore = "needs root and the Debian mirror; run by `cargo xtask test`"]
fn e2e_02_caches_verify_and_release_rehearsal() {
    built_iso();
    let dist = dist_dir();
    let dist_arg = dist.to_str().unwrap();
    let stem = iso_name().trim_end_matches(".hybrid.iso").to_owned();
    let version = env!("CARGO_PKG_VERSION");

    // The kernel is cached by its inputs: asking again compiles nothing.
    let kernel = xtask(&["kernel"]);
    assert!(kernel.status.success());
    assert!(stdout(&kernel).contains("nothing compiled"), "the unchanged kernel was not taken from the cache");

    // Users' way to check a download: xtask verify, and gpg + sha512sum by hand.
    assert!(xtask(&["verify", dist_arg]).status.success(), "verify failed");
    let gnupg = tempfile::tempdir().unwrap();
    let gpg = || {
        let mut c = Command::new("gpg");
        c.arg("--homedir").arg(gnupg.path()).arg("--batch");
        c
    };
    run(gpg().arg("--import").arg(dist.join("DEVELOPMENT-KEY-NOT-FOR-RELEASE.asc")));
    for sums in ["SHA256SUMS", "SHA512SUMS"] {
        run(gpg().arg("--verify").arg(dist.join(format!("{sums}.sign"))).arg(dist.join(sums)));
    }
    run(Command::new("sha512sum").args(["--strict", "-c", "SHA512SUMS"]).current_dir(&dist));
    let _ = Command::new("gpgconf").arg("--homedir").arg(gnupg.path()).args(["--kill", "all"]).status();

    // The release rehearsal assembles exactly a release's file set, and it verifies.
    let release_dir = tempfile::tempdir().unwrap();
    let release_out = release_dir.path().join("release");
    let rehearsal = xtask(&["release", "--dry-run", "--dist", dist_arg, "--out", release_out.to_str().unwrap()]);
    assert!(rehearsal.status.success(), "release --dry-run failed");
    let mut released: Vec<String> =
        fs::read_dir(&release_out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    released.sort();
    let mut expected = vec![
        "SHA256SUMS".to_owned(),
        "SHA256SUMS.sign".into(),
        "SHA512SUMS".into(),
        "SHA512SUMS.sign".into(),
        "SIGNING-KEY-FINGERPRINT.txt".into(),
        format!("{stem}.build-info.json"),
        format!("{stem}.cdx.json"),
        format!("{stem}.hybrid.iso"),
        format!("{stem}.intoto.jsonl"),
        format!("{stem}.packages"),
        format!("{stem}.packages.lock"),
        format!("{stem}.qcow2"),
        format!("{stem}.raw.zst"),
        format!("{stem}.spdx.json"),
        format!("truthdb-installer-v{version}.iso"),
        format!("truthdb-installer-v{version}.iso.sha256"),
    ];
    expected.sort();
    assert_eq!(released, expected);
    // The organisation's names: the same bytes, and a .sha256 that sha256sum checks.
    let org_iso = format!("truthdb-installer-v{version}.iso");
    assert_eq!(
        fs::metadata(release_out.join(&org_iso)).unwrap().len(),
        fs::metadata(release_out.join(format!("{stem}.hybrid.iso"))).unwrap().len()
    );
    run(Command::new("sha256sum").args(["--strict", "-c"]).arg(format!("{org_iso}.sha256")).current_dir(&release_out));
    assert!(
        xtask(&[
            "verify",
            release_out.to_str().unwrap(),
            "--key",
            dist.join("DEVELOPMENT-KEY-NOT-FOR-RELEASE.asc").to_str().unwrap()
        ])
        .status
        .success()
    );

    // Nothing changed: the published image is reused and the command says so. e2e_01
    // recorded a lock, so its image is the build from that lock.
    let lock = e2e_lock();
    let again = xtask(&["iso", "--vm-images", "--lock", lock.to_str().unwrap(), "--dist", dist_arg]);
    assert!(again.status.success());
    assert!(stdout(&again).contains("up to date"), "an unchanged rebuild did not skip");
}

#[test]
#[ignore = "needs root and the build root e2e_01 made or reused; run by `cargo xtask test`"]
fn e2e_03_build_leaves_no_mount_or_process() {
    // Nothing the build and the commands since left mounted on the host...
    no_mounts_below(&cache_dir());
    no_mounts_below(&repo_root().join("target/truthdb-os"));
    // ...nor does a command that fails in the build root, nor one whose xtask is SIGKILLed.
    a_failing_command_in_the_build_root_leaves_no_mount();
    a_killed_build_leaves_no_mount_and_no_process();
}

#[test]
#[ignore = "needs root and QEMU; run by `cargo xtask test`"]
fn e2e_04_boot_four_ways_on_the_hardware_matrix() {
    let iso_path = built_iso();
    // Boot it the four ways (BIOS and UEFI, each as a CD and as a USB stick, through its own boot
    // loaders), each on a machine of the hardware matrix: every network card, storage controller
    // and display QEMU emulates for the hypervisors and servers README lists, each bound to its
    // driver in the booted image, and the installer's first frame on each display.
    let tested = xtask(&["hardware-test", "--iso", iso_path.to_str().unwrap()]);
    assert!(tested.status.success(), "hardware test failed");
    let report = stdout(&tested);
    for (machine, mode) in
        [("hw-virtio-gpu", "bios-cd"), ("hw-qxl", "bios-usb"), ("hw-cirrus", "uefi-cd"), ("hw-ramfb", "uefi-usb")]
    {
        let at = report
            .find(&format!("PASS {machine} ({mode}, "))
            .unwrap_or_else(|| panic!("{machine} did not pass in {mode}:\n{report}"));
        let marker = report[at..].lines().find(|l| l.contains("boot marker: ")).expect("a boot marker line");
        assert!(marker.contains(&format!("version={}", env!("CARGO_PKG_VERSION"))), "{marker}");
        assert!(marker.contains("kernel=") && marker.contains("-truthdb"), "not our kernel: {marker}");
    }
    for device in
        ["vmxnet3: net", "rtl8139: net", "igb: net", "pvscsi: disk", "megasas: disk", "lsi53c895a: disk", "nvme: disk"]
    {
        assert!(report.contains(device), "missing {device:?} in:\n{report}");
    }
}

#[test]
#[ignore = "needs root and QEMU; run by `cargo xtask test`"]
fn e2e_05_install_unattended_refusals_disk_image() {
    let iso_path = built_iso();
    // Install it: unattended onto a blank disk, boot the disk, reach PostgreSQL and SSH from the
    // host; refusals leave a disk untouched; a `disk` image boots the same way.
    let installed = xtask(&["install-test", "--iso", iso_path.to_str().unwrap()]);
    assert!(installed.status.success(), "install test failed");
    let report = stdout(&installed);
    for pass in [
        // Its power cut the moment the installer said done; the disk boots healthy after it.
        "PASS unattended install from the ISO",
        "its power cut at TRUTHDB-INSTALL-DONE",
        "PASS installed boots alone",
        "PASS installed: psql over 127.0.0.1",
        "PASS installed: ssh over 127.0.0.1",
        "PASS installed: shut down cleanly (ACPI power button)",
        "PASS no-wipe: refused",
        "PASS boot-medium: refused",
        "PASS largest-usb: refused",
        "PASS reinstall: refused",
        "PASS disk image built",
        "PASS disk-image boots alone",
        "PASS disk-image: psql over 127.0.0.1",
        "PASS disk-image: ssh over 127.0.0.1",
    ] {
        assert!(report.contains(pass), "missing {pass:?} in the install test's report:\n{report}");
    }
    assert!(report.contains("health=ok"), "{report}");
    // The disk image was made in a private mount namespace on a loop device: neither is left.
    // (Its mounts never were in the host's table, so reading that would prove nothing: what the
    // host can see is its work directory and the loop device.)
    let work_dirs: Vec<_> = fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("truthdb-disk-"))
        .map(|e| e.path())
        .collect();
    assert!(work_dirs.is_empty(), "the disk image's work directories were left: {work_dirs:?}");
    let loops = run(Command::new("losetup").arg("--list"));
    assert!(!stdout(&loops).contains("install-test"), "a loop device was left attached:\n{}", stdout(&loops));
}

#[test]
#[ignore = "needs root and QEMU; run by `cargo xtask test`"]
fn e2e_06_install_graphical() {
    let iso_path = built_iso();
    // Install it as a person would: the graphical installer on -vga std, driven by key presses
    // over QMP, each screen captured and checked to be the installer's picture.
    let gui = xtask(&["gui-test", "--iso", iso_path.to_str().unwrap()]);
    assert!(gui.status.success(), "gui test failed");
    let report = stdout(&gui);
    for pass in [
        "PASS no display: TRUTHDB-GUI-NO-DISPLAY",
        "PASS graphical installer up",
        "PASS welcome screen captured",
        "PASS installed through the graphical installer",
        "PASS gui-installed boots alone",
        "PASS gui-installed: psql over 127.0.0.1",
        "PASS gui-installed: ssh over 127.0.0.1",
    ] {
        assert!(report.contains(pass), "missing {pass:?} in the gui test's report:\n{report}");
    }
    assert!(report.contains("output=\"kms "), "the installer did not draw on DRM/KMS:\n{report}");
}

#[test]
#[ignore = "needs root and the Debian mirror; run by `cargo xtask test`"]
fn e2e_07_unknown_package_is_named_and_dist_is_left_alone() {
    let project = ProjectCopy::new();
    let line = project.append_line("packages.list", "truthdb-no-such-package");
    let dist = project.path("dist");
    fs::create_dir_all(&dist).unwrap();
    fs::write(dist.join("SHA256SUMS"), "previous release\n").unwrap();
    let before = snapshot(&dist);

    let out = project.xtask(&["iso", "--dist", dist.to_str().unwrap()]);
    let err = stderr(&out);
    eprintln!("{err}");
    assert!(!out.status.success(), "an unknown package did not fail the build");
    assert!(err.contains("unknown package \"truthdb-no-such-package\""), "{err}");
    assert!(err.contains(&format!("packages.list:{line}")), "the error does not say where: {err}");
    assert_eq!(snapshot(&dist), before, "dist/ changed after a failed build");
}

/// The mount namespace of the build-root command that wrote `ns_file` (its `readlink
/// /proc/self/ns/mnt`), and every host process still in it.
fn processes_in_namespace(ns_file: &Path) -> (String, Vec<String>) {
    let ns = fs::read_to_string(ns_file).expect("the command in the build root recorded its namespace");
    let ns = ns.trim().to_owned();
    assert!(ns.starts_with("mnt:["), "not a mount namespace: {ns:?}");
    let host_ns = fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_ne!(Path::new(&ns), host_ns, "the command ran in the host's mount namespace");
    let left = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| fs::read_link(e.path().join("ns/mnt")).is_ok_and(|l| l == Path::new(&ns)))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    (ns, left)
}

/// Runs a failing command in the build root the way every build step runs (`xtask
/// run-in-build-root`, i.e. `RootCommand`), and checks the namespace it ran in is gone: no
/// process is left in it (the host's mount table cannot show its mounts: they never were
/// there), and the bound build directory can be removed.
fn a_failing_command_in_the_build_root_leaves_no_mount() {
    let root = build_root();
    let build = tempfile::tempdir().unwrap();
    let bind = format!("{}:/build", build.path().display());
    // `false` fails inside the namespace after every mount is made.
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["run-in-build-root", "--root"])
        .arg(&root)
        .args(["--workdir", "/build", "--bind", &bind, "--", "sh", "-c"])
        .arg("mountpoint -q /build && mountpoint -q /proc && readlink /proc/self/ns/mnt > /build/ns && false")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the failing command succeeded");
    let (ns, left) = processes_in_namespace(&build.path().join("ns"));
    assert!(left.is_empty(), "processes {left:?} are still in the failed build's namespace {ns}");
    no_mounts_below(&root);
    fs::remove_dir_all(build.path()).expect("the build directory can be removed");
}

/// SIGKILL to xtask itself while a command runs in the build root (what a CI timeout or
/// `kill -9` does to the parent): unshare dies with it (PR_SET_PDEATHSIG), the namespace's
/// PID 1 with unshare (`--kill-child`), and the kernel kills everything inside and drops the
/// namespace with its mounts.
fn a_killed_build_leaves_no_mount_and_no_process() {
    let root = build_root();
    let build = tempfile::tempdir().unwrap();
    let bind = format!("{}:/build", build.path().display());
    let marker = format!("truthdb-e2e-sleep-{}", std::process::id());
    let mut xtask = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["run-in-build-root", "--root"])
        .arg(&root)
        .args(["--workdir", "/build", "--bind", &bind, "--", "bash", "-c"])
        .arg(format!("readlink /proc/self/ns/mnt > /build/ns && exec -a {marker} sleep 300"))
        .spawn()
        .unwrap();
    // Wait until the command runs inside, with its mounts made.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !running(&marker) {
        assert!(std::time::Instant::now() < deadline, "the command never started in the build root");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (ns, before) = processes_in_namespace(&build.path().join("ns"));
    assert!(!before.is_empty(), "no process seen in the running build's namespace {ns}: the check is blind");
    xtask.kill().unwrap();
    xtask.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, left) = processes_in_namespace(&build.path().join("ns"));
        if left.is_empty() && !running(&marker) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "10 s after SIGKILL of xtask, processes {left:?} are still in the build's namespace {ns}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    no_mounts_below(&root);
    fs::remove_dir_all(build.path()).expect("the build directory can be removed");
}

fn running(marker: &str) -> bool {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|e| fs::read(e.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).starts_with(marker)))
}

/// A complete build root from the cache (`e2e_01`'s build made or reused one).
fn build_root() -> PathBuf {
    let roots = cache_dir().join("build-roots");
    fs::read_dir(&roots)
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().path())
        .find(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .unwrap_or_else(|| panic!("no build root in {}: {NEEDS_E2E_01}", roots.display()))
}

fn cache_dir() -> PathBuf {
    std::env::var_os("TRUTHDB_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| "/var/cache/truthdb-os".into())
}

#[test]
#[ignore = "needs root and the Debian mirror; run by `cargo xtask test`"]
fn e2e_08_overlay_change_reuses_the_cached_chroot() {
    // e2e_01 left the chroot of these package inputs in the cache; a project that differs only
    // by an overlay file must get it from there, and its ISO must carry the new file.
    built_iso();
    let project = ProjectCopy::new();
    let stamp = format!("incremental build {}\n", std::process::id());
    project.write("overlay/etc/truthdb-e2e-incremental", &stamp);
    let dist = project.path("dist");
    let started = std::time::Instant::now();
    // zstd: the development compression (a minute where xz takes several), checked below too.
    // At the kernel's own timestamp, so the copy finds the repository's kernel in the cache.
    let out =
        project.xtask_at_epoch(&["iso", "--compression", "zstd", "--dist", dist.to_str().unwrap()], kernel_epoch());
    eprintln!("{}{}", stderr(&out), stdout(&out));
    assert!(out.status.success(), "the incremental build failed");
    let report = stdout(&out);
    assert!(stderr(&out).contains("cached: nothing to compile"), "the copy compiled a kernel");
    assert!(
        report.contains("chroot with its packages cached"),
        "an overlay change rebuilt the packages' chroot:\n{report}"
    );
    eprintln!("incremental build (overlay file changed): {:.0?}", started.elapsed());

    // The new file is in the image's root file system.
    let scratch = tempfile::tempdir().unwrap();
    let squashfs = extract_squashfs(&dist.join(iso_name()), scratch.path());
    // The squashfs superblock's compression id (u16 at byte 20): 6 is zstd; the build info says so.
    let mut superblock = [0u8; 22];
    std::io::Read::read_exact(&mut fs::File::open(&squashfs).unwrap(), &mut superblock).unwrap();
    assert_eq!(u16::from_le_bytes([superblock[20], superblock[21]]), 6, "the squashfs is not zstd-compressed");
    let info = fs::read_to_string(dist.join(iso_name().replace(".hybrid.iso", ".build-info.json"))).unwrap();
    assert!(info.contains("\"squashfs_compression\": \"zstd-3\""), "{info}");
    let cat = |path: &str| run(Command::new("unsquashfs").arg("-cat").arg(&squashfs).arg(path));
    assert_eq!(stdout(&cat("etc/truthdb-e2e-incremental")), stamp, "the ISO does not carry the changed overlay");
    // ...and what the hooks made after the includes (the identity hook writes the banner).
    assert!(stdout(&cat("etc/issue")).starts_with("TruthDB OS"), "the hooks' work is missing from the ISO");
}

/// `xtask --container ...` with Podman on the builder image made from a local base (these
/// machines reach no registry), sharing the host's cache (build root, kernel, chroot) so the
/// suite stays inside its time.
fn container_xtask(args: &[&str]) -> Output {
    let mut all = container_switches();
    all.extend(args.iter().map(|a| (*a).to_owned()));
    xtask(&all.iter().map(String::as_str).collect::<Vec<_>>())
}

/// How the suite runs `--container`: Podman, the local base, the host's cache.
fn container_switches() -> Vec<String> {
    ["--container", "--engine", "podman", "--base", "local", "--cache-dir", &host_cache()].map(str::to_owned).to_vec()
}

/// The host's cache, which the container builds share (as `cargo xtask test` runs them).
fn host_cache() -> String {
    std::env::var("TRUTHDB_CACHE_DIR").unwrap_or_else(|_| "/var/cache/truthdb-os".to_owned())
}

/// Containers of this project's runs that the engine still has, by name.
fn leftover_containers() -> Vec<String> {
    let out = run(Command::new("podman").args(["ps", "--all", "--format", "{{.Names}}"]));
    stdout(&out).lines().filter(|n| n.starts_with("truthdb-os-")).map(str::to_owned).collect()
}

/// Container root file systems mounted on the host (the engine's overlay mounts).
fn container_mounts() -> usize {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo.lines().filter(|l| l.contains("/containers/storage/overlay/") && l.contains("/merged")).count()
}

/// Waits up to a minute for `check` to hold.
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "after a minute still not true: {what}");
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[test]
#[ignore = "needs root, Podman and the Debian mirror; run by `cargo xtask test`"]
fn e2e_09_container_build_boots_and_matches_the_native_one() {
    if std::env::var_os("TRUTHDB_OS_BUILDER").is_some() {
        // `cargo xtask --container test`: no engine in the builder; this runs from a host.
        eprintln!("e2e_09: inside the builder image, where no container engine runs: not run here");
        return;
    }
    let native_iso = built_iso();
    let dist = repo_root().join("target/truthdb-os/e2e-container-dist");
    let _ = fs::remove_dir_all(&dist);
    fs::create_dir_all(&dist).unwrap();
    fs::write(dist.join("SHA256SUMS"), "previous release\n").unwrap();
    let before = snapshot(&dist);
    let dist_arg = dist.to_str().unwrap();
    let mounts_before = container_mounts();

    // No engine on PATH: the error says what to install, and nothing is touched.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["--container", "iso", "--dist", dist_arg])
        .env("PATH", empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "no engine, yet it succeeded");
    assert!(stderr(&out).contains("no container engine found"), "{}", stderr(&out));
    assert!(stderr(&out).contains("Install Docker"), "{}", stderr(&out));
    assert_eq!(snapshot(&dist), before, "dist/ changed without an engine");

    // An engine that does not honour --privileged (a wrapper dropping it) is refused with the
    // reason, before any build, and dist/ is left as it was.
    let shim = tempfile::tempdir().unwrap();
    let wrapper = shim.path().join("podman");
    fs::write(
        &wrapper,
        "#!/bin/sh\nfor a; do shift; [ \"$a\" = --privileged ] || set -- \"$@\" \"$a\"; done\nexec /usr/bin/podman \"$@\"\n",
    )
    .unwrap();
    run(Command::new("chmod").arg("+x").arg(&wrapper));
    let path = format!("{}:{}", shim.path().display(), std::env::var("PATH").unwrap());
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(container_switches())
        .args(["iso", "--dist", dist_arg])
        .env("PATH", &path)
        .output()
        .unwrap();
    eprintln!("{}", stderr(&out));
    assert!(!out.status.success(), "an unprivileged container was not refused");
    assert!(stderr(&out).contains("not privileged enough"), "{}", stderr(&out));
    assert_eq!(snapshot(&dist), before, "dist/ changed after a refused container build");
    assert!(leftover_containers().is_empty(), "containers left: {:?}", leftover_containers());

    // xtask SIGKILLed while the container builds: the container and its mounts go with it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(container_switches())
        .args(["iso", "--force", "--dist", dist_arg])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let name = format!("truthdb-os-iso-{}", child.id());
    eventually("the build's container runs", || leftover_containers().contains(&name));
    std::thread::sleep(std::time::Duration::from_secs(5));
    child.kill().unwrap();
    child.wait().unwrap();
    eventually("no container left after xtask was killed", || leftover_containers().is_empty());
    eventually("no container mount left after xtask was killed", || container_mounts() == mounts_before);
    assert_eq!(snapshot(&dist), before, "dist/ changed after a killed container build");

    // The real build: the builder image, the ISO built in it (zstd: the suite's time).
    let built = container_xtask(&["iso", "--compression", "zstd", "--dist", dist_arg]);
    assert!(built.status.success(), "the container build failed");
    assert!(stdout(&built).contains("published to"), "{}", stdout(&built));
    assert!(leftover_containers().is_empty(), "containers left: {:?}", leftover_containers());
    assert_eq!(container_mounts(), mounts_before, "container mounts left on the host");
    let verified = xtask(&["verify", dist_arg]);
    assert!(verified.status.success(), "verify failed on the container-built dist/");
    let iso = dist.join(iso_name());

    // The same packages as the native build, version for version.
    let packages = |dir: &Path| {
        let name = iso_name().replace(".hybrid.iso", ".packages");
        fs::read_to_string(dir.join(&name)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(&name).display()))
    };
    let native = packages(native_iso.parent().unwrap());
    let contained = packages(&dist);
    assert!(native.lines().count() > 100, "too few packages in the native list");
    assert_eq!(contained, native, "the container build's package list differs from the native build's");
    let info = fs::read_to_string(dist.join(iso_name().replace(".hybrid.iso", ".build-info.json"))).unwrap();
    assert!(info.contains("\"squashfs_compression\": \"zstd-3\""), "{info}");

    // It boots, as a CD on BIOS and as a USB stick on UEFI, with QEMU in the builder too.
    let booted =
        container_xtask(&["boot-test", "--iso", iso.to_str().unwrap(), "--mode", "bios-cd", "--mode", "uefi-usb"]);
    assert!(booted.status.success(), "the container-built ISO did not boot");
    for mode in ["bios-cd", "uefi-usb"] {
        let report = stdout(&booted);
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("PASS {mode}")))
            .unwrap_or_else(|| panic!("{mode} did not pass:\n{report}"));
        assert!(line.contains(&format!("version={}", env!("CARGO_PKG_VERSION"))), "{line}");
    }
    assert!(leftover_containers().is_empty(), "containers left: {:?}", leftover_containers());
}

/// Adds `repository` to the copy's manifest as `[[apt_repositories]]` named `local`, its key
/// written to `lb-config/apt-keys/local.asc`.
fn add_apt_repository(project: &ProjectCopy, url: &str, key: &str) {
    project.write("lb-config/apt-keys/local.asc", key);
    project.append(
        "lb-config/appliance.toml",
        &format!(
            "\n[[apt_repositories]]\nname = \"local\"\nurl = \"{url}\"\nsuite = \"trixie\"\ncomponents = [\"main\"]\n\
             key = \"apt-keys/local.asc\"\npin_priority = 500\n"
        ),
    );
}

#[test]
#[ignore = "needs root, the Debian mirror and e2e_01's build root"]
fn e2e_10_extra_apt_repository_and_payload_profile_are_checked_before_the_build() {
    build_root(); // the package check below asks the build root e2e_01 left
    let repository = common::LocalAptRepository::new("truthdb-local-hello", "trixie");

    // Rendered as live-build's own archive files, for the build and kept in the image.
    let project = ProjectCopy::new();
    add_apt_repository(&project, &repository.url, &repository.key);
    let rendered = project.path("rendered");
    let out = project.xtask(&["config", "--out", rendered.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for stage in ["chroot", "binary"] {
        let list = fs::read_to_string(rendered.join(format!("config/archives/local.list.{stage}"))).unwrap();
        assert_eq!(list, format!("deb {} trixie main\n", repository.url));
        let key = fs::read_to_string(rendered.join(format!("config/archives/local.key.{stage}"))).unwrap();
        assert_eq!(key, repository.key);
        let pin = fs::read_to_string(rendered.join(format!("config/archives/local.pref.{stage}"))).unwrap();
        assert_eq!(pin, "Package: *\nPin: origin \"127.0.0.1\"\nPin-Priority: 500\n");
    }

    // Reachable and signed by its key: its package is found there (only the unknown one is
    // named), before anything is built.
    let dist = project.path("dist");
    fs::create_dir_all(&dist).unwrap();
    fs::write(dist.join("SHA256SUMS"), "previous release\n").unwrap();
    let before = snapshot(&dist);
    project.append_line("packages.list", "truthdb-local-hello");
    let unknown = project.append_line("packages.list", "truthdb-no-such-package");
    let out = project.xtask_at_epoch(&["iso", "--dist", dist.to_str().unwrap()], kernel_epoch());
    let err = stderr(&out);
    eprintln!("{err}");
    assert!(!out.status.success());
    assert!(err.contains("done  apt sources"), "the repository check did not pass: {err}");
    assert!(err.contains(&format!("packages.list:{unknown}: unknown package \"truthdb-no-such-package\"")), "{err}");
    assert!(!err.contains("unknown package \"truthdb-local-hello\""), "the repository's package was not found: {err}");
    assert_eq!(snapshot(&dist), before, "dist/ changed after a failed build");

    // Signed by another key: refused, naming the repository, within seconds.
    let other = common::LocalAptRepository::new("truthdb-other", "trixie");
    let project = ProjectCopy::new();
    add_apt_repository(&project, &repository.url, &other.key);
    let started = std::time::Instant::now();
    let out = project.xtask(&["iso", "--dist", dist.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains(&repository.url) && err.contains("not signed by the key"), "{err}");
    assert!(started.elapsed().as_secs() < 60, "the refusal took {:?}", started.elapsed());
    assert_eq!(snapshot(&dist), before);

    // Unreachable (nothing listens there any more): fails within seconds naming the URL.
    let gone = other.url.clone();
    drop(other);
    let project = ProjectCopy::new();
    add_apt_repository(&project, &gone, &repository.key);
    let started = std::time::Instant::now();
    let out = project.xtask(&["iso", "--dist", dist.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains(&format!("cannot fetch {gone}/dists/trixie/InRelease")), "{err}");
    assert!(started.elapsed().as_secs() < 60, "the failure took {:?}", started.elapsed());
    assert_eq!(snapshot(&dist), before);

    // The truthdb payload profile as shipped, where TruthDB's repository cannot be reached (as
    // from these machines): the build stops at once, naming the repository's URL.
    let truthdb = "https://truthdb.github.io/apt";
    let reachable = Command::new("curl")
        .args(["-sSf", "-o", "/dev/null", "--max-time", "20"])
        .arg(format!("{truthdb}/dists/trixie/InRelease"))
        .status()
        .unwrap()
        .success();
    if reachable {
        eprintln!("{truthdb} is reachable from this machine: its refusal cannot be shown here");
        return;
    }
    let project = ProjectCopy::new();
    let started = std::time::Instant::now();
    let out = project.xtask(&["--payload", "truthdb", "iso", "--dist", dist.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains(&format!("cannot fetch {truthdb}/dists/trixie/InRelease")), "{err}");
    assert!(started.elapsed().as_secs() < 60, "the failure took {:?}", started.elapsed());
    assert_eq!(snapshot(&dist), before);
}

#[test]
#[ignore = "needs root and QEMU; run by `cargo xtask test`"]
fn e2e_12_generic_vm_image_provisions_itself_on_first_boot() {
    let iso_path = built_iso();
    // The generic qcow2 e2e_01 published, as two VMs with their own NoCloud seeds on larger
    // disks, one given systemd credentials, one with nothing, and the first booted again.
    let image = iso_path.to_str().unwrap().replace(".hybrid.iso", ".qcow2");
    let tested = xtask(&["first-boot-test", "--iso", iso_path.to_str().unwrap(), "--image", &image]);
    assert!(tested.status.success(), "first-boot test failed");
    let report = stdout(&tested);
    for pass in [
        "PASS generic image: the published",
        "PASS vm-a: provisioned by cloud-init",
        "PASS vm-b: provisioned by cloud-init",
        "PASS vm-c: provisioned by systemd credentials",
        "PASS vm-a: another appliance's admin key is refused",
        "PASS vm-a and vm-b differ",
        "PASS no-seed: says how to provision",
        "PASS vm-a boots again",
        // Power cuts (issue 31): at provisioning's "done", in its middle, while rows are
        // written; each next boot healthy, provisioned once, the committed rows all there.
        "PASS vm-a-cut-at-done: power cut at",
        "PASS vm-c-cut-in-provisioning: power cut at",
        "PASS vm-a: power cut while rows were being inserted",
        "PASS vm-a-again: all ",
        "PASS vm-a-again: shut down cleanly (ACPI power button)",
    ] {
        assert!(report.contains(pass), "missing {pass:?} in:\n{report}");
    }
}

/// The SBOM validators from PyPI, pinned, in a virtualenv of their own under `target/`.
const SBOM_VALIDATORS: [&str; 2] = ["spdx-tools==0.8.5", "cyclonedx-python-lib[json-validation]==11.12.0"];

fn sbom_validator_python() -> PathBuf {
    let venv = repo_root().join("target/truthdb-os/tools/sbom-venv");
    let python = venv.join("bin/python");
    let stamp = venv.join("installed");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(&SBOM_VALIDATORS.join("\n")) {
        let _ = fs::remove_dir_all(&venv);
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--only-binary", ":all:"])
            .args(SBOM_VALIDATORS));
        fs::write(&stamp, SBOM_VALIDATORS.join("\n")).unwrap();
    }
    python
}

#[test]
#[ignore = "needs e2e_01's ISO and PyPI; run by `cargo xtask test`"]
fn e2e_13_sbom_and_provenance_are_valid_and_describe_the_image() {
    let iso = built_iso();
    let dist = dist_dir();
    let stem = iso_name().trim_end_matches(".hybrid.iso").to_owned();
    let spdx_path = dist.join(format!("{stem}.spdx.json"));
    let cdx_path = dist.join(format!("{stem}.cdx.json"));
    let provenance_path = dist.join(format!("{stem}.intoto.jsonl"));

    // The reference validators accept both documents.
    let validated = run(Command::new(sbom_validator_python())
        .arg(repo_root().join("xtask/tests/common/validate_sbom.py"))
        .args([&spdx_path, &cdx_path]));
    eprintln!("{}", stdout(&validated));

    // The SPDX document lists exactly the packages the image has (`.packages`, which live-build
    // writes from dpkg), each at its version, every Debian one with its .deb's sha256.
    let spdx: serde_json::Value = serde_json::from_str(&fs::read_to_string(&spdx_path).unwrap()).unwrap();
    let spdx_packages = spdx["packages"].as_array().unwrap();
    let debs: Vec<&serde_json::Value> =
        spdx_packages.iter().filter(|p| p["SPDXID"].as_str().unwrap().starts_with("SPDXRef-deb-")).collect();
    let listed = fs::read_to_string(dist.join(format!("{stem}.packages"))).unwrap();
    let mut manifest: Vec<(String, String)> = listed
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(name, version)| (name.split(':').next().unwrap().to_owned(), version.to_owned()))
        .collect();
    manifest.sort();
    let mut in_sbom: Vec<(String, String)> = debs
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_owned(), p["versionInfo"].as_str().unwrap().to_owned()))
        .collect();
    in_sbom.sort();
    assert_eq!(in_sbom, manifest, "the SBOM's Debian packages are not the image's");
    let unhashed: Vec<&str> =
        debs.iter().filter(|p| p.get("checksums").is_none()).map(|p| p["name"].as_str().unwrap()).collect();
    assert!(unhashed.is_empty(), "packages without their .deb's sha256: {unhashed:?}");
    let kernel = debs.iter().find(|p| p["name"].as_str().unwrap().starts_with("linux-image-")).unwrap();
    assert!(kernel["comment"].as_str().unwrap().contains("kernel-config-sha256: "), "{kernel}");
    let licensed = debs.iter().filter(|p| p["licenseDeclared"] != "NOASSERTION").count();
    eprintln!("{licensed} of {} Debian packages declare a machine-readable licence", debs.len());
    assert!(licensed * 2 > debs.len(), "fewer than half the packages have a licence: {licensed}");
    let crates = spdx_packages.iter().filter(|p| p["SPDXID"].as_str().unwrap().starts_with("SPDXRef-crate-")).count();
    assert!(crates > 50, "the installer's crates are missing ({crates})");

    // CycloneDX names the same components.
    let cdx: serde_json::Value = serde_json::from_str(&fs::read_to_string(&cdx_path).unwrap()).unwrap();
    let cdx_debs = cdx["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["purl"].as_str().unwrap().starts_with("pkg:deb/"))
        .count();
    assert_eq!(cdx_debs, debs.len());

    // The provenance statement's subject is the published ISO, its byproducts the two SBOMs,
    // its source the commit the image was built from.
    let statement: serde_json::Value =
        serde_json::from_str(fs::read_to_string(&provenance_path).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(statement["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(statement["subject"][0]["name"], iso_name().as_str());
    assert_eq!(statement["subject"][0]["digest"]["sha256"], sha256_of(&iso).unwrap().as_str());
    for (i, path) in [&spdx_path, &cdx_path].iter().enumerate() {
        assert_eq!(
            statement["predicate"]["runDetails"]["byproducts"][i]["digest"]["sha256"],
            sha256_of(path).unwrap().as_str()
        );
    }
    let head = run(Command::new("git").args(["-c", "safe.directory=*", "rev-parse", "HEAD"]).current_dir(repo_root()));
    assert_eq!(
        statement["predicate"]["buildDefinition"]["resolvedDependencies"][0]["digest"]["gitCommit"],
        stdout(&head).trim()
    );
    // e2e_01 recorded a package lock: the provenance names it by digest.
    let dependencies = statement["predicate"]["buildDefinition"]["resolvedDependencies"].as_array().unwrap();
    let lock =
        dependencies.iter().find(|d| d["name"] == "packages.lock").expect("the provenance names no packages.lock");
    assert_eq!(lock["digest"]["sha256"], sha256_of(&e2e_lock()).unwrap().as_str());
    // All three are in the signed sums (verify requires every published document listed).
    let sums = fs::read_to_string(dist.join("SHA256SUMS")).unwrap();
    for name in [&spdx_path, &cdx_path, &provenance_path] {
        assert!(sums.contains(name.file_name().unwrap().to_str().unwrap()), "{} not in SHA256SUMS", name.display());
    }
}

/// The lock e2e_01 recorded: every package of the image that is not ours at the version the
/// image has, the signed indexes (the archive state), and every file in the package store.
fn check_recorded_lock(said: &str, dist: &Path) {
    assert!(said.contains("package lock: ") && said.contains("written to"), "{said}");
    assert!(said.contains("build root: made (recording a package lock: made anew)"), "{said}");
    let lock: toml::Value = toml::from_str(&fs::read_to_string(e2e_lock()).unwrap()).unwrap();
    let packages = lock["package"].as_array().unwrap();
    let indexes = lock["index"].as_array().unwrap();
    assert!(packages.len() > 200, "only {} packages locked", packages.len());
    let root_packages = lock["build_root_package"].as_array().unwrap();
    let root_indexes = lock["build_root_index"].as_array().unwrap();
    let root_names: Vec<&str> = root_packages.iter().map(|p| p["name"].as_str().unwrap()).collect();
    for tool in ["live-build", "debootstrap", "gcc", "libudev-dev"] {
        assert!(root_names.contains(&tool), "the build root's {tool} is not in the lock");
    }
    let urls: Vec<&str> = indexes.iter().map(|i| i["url"].as_str().unwrap()).collect();
    for suite in ["dists/trixie/InRelease", "dists/trixie-security/InRelease", "dists/trixie-updates/InRelease"] {
        assert!(urls.iter().any(|u| u.ends_with(suite)), "no {suite} among the locked indexes: {urls:?}");
    }
    let store = cache_dir().join("packages/sha256");
    for file in packages.iter().chain(indexes).chain(root_packages).chain(root_indexes) {
        let sha = file["sha256"].as_str().unwrap();
        assert!(store.join(sha).is_file(), "{} is not in the package store", file["url"]);
    }
    // A name can be locked at two versions: debootstrap takes trixie's, then the chroot's
    // upgrade the security suite's (seen: libssl3t64 3.5.9-1~deb13u1 and 3.5.10-1~deb13u1), and
    // replaying the build needs both files. The image's version must be one of them.
    let locked: std::collections::BTreeSet<(&str, &str)> =
        packages.iter().map(|p| (p["name"].as_str().unwrap(), p["version"].as_str().unwrap())).collect();
    let published = dist.join(iso_name().replace(".hybrid.iso", ".packages.lock"));
    assert_eq!(
        fs::read(&published).unwrap(),
        fs::read(e2e_lock()).unwrap(),
        "the published lock is not the recorded one"
    );
    let manifest = dist.join(iso_name().replace(".hybrid.iso", ".packages"));
    for line in fs::read_to_string(&manifest).unwrap().lines() {
        let (name, version) = line.split_once('\t').unwrap();
        let name = name.split(':').next().unwrap();
        if name.starts_with("linux-image-") && name.ends_with("-truthdb") {
            continue; // ours, from config/packages.chroot
        }
        assert!(locked.contains(&(name, version)), "{name} {version} of the image is not in the lock as such");
    }
}

#[test]
#[ignore = "needs root, the Debian mirror and e2e_01's ISO and caches; run by `cargo xtask test`"]
fn e2e_14_a_second_build_of_the_commit_is_bit_for_bit_the_same() {
    built_iso();
    let dist = dist_dir();
    // A clean clone of HEAD built in its own work directory from the lock e2e_01 recorded,
    // sharing the machine's caches (so the customisation and the binary stage run again, every
    // download served by the apt proxy from the package store), compared with e2e_01's files.
    // The full form, with a cache of its own, is measured in BENCHMARKS.md.
    let lock = e2e_lock();
    let checked = xtask(&[
        "repro-check",
        "--shared-cache",
        "--against",
        dist.to_str().unwrap(),
        "--lock",
        lock.to_str().unwrap(),
    ]);
    let report = stdout(&checked);
    assert!(checked.status.success(), "repro-check failed:\n{report}");
    assert!(report.contains(&format!("package lock: building from {}", lock.display())), "{report}");
    // e2e_01 made the build root from the archive as it recorded the lock: checked, and reused.
    assert!(!report.contains("build root: made"), "the locked build did not take the recorded build root:\n{report}");
    assert!(report.contains("reproducible: two builds of "), "{report}");
    let stem = iso_name().trim_end_matches(".hybrid.iso").to_owned();
    for name in [
        format!("{stem}.hybrid.iso"),
        format!("{stem}.spdx.json"),
        format!("{stem}.build-info.json"),
        format!("{stem}.packages.lock"),
    ] {
        assert!(report.contains(&format!("same     {name}")), "{name} not compared:\n{report}");
    }
    // The second build's work tree is gone; e2e_01's ISO is untouched.
    assert!(!repo_root().join("target/truthdb-os/repro/src").exists());
    built_iso();
}

#[test]
#[ignore = "needs root, QEMU, the Debian mirror and e2e_01's caches; run by `cargo xtask test`"]
fn e2e_15_a_package_from_an_extra_apt_repository_runs_on_the_installed_appliance() {
    // e2e_10 showed the repository checked before a build; here an image is built with it: a
    // package of a signed repository on 127.0.0.1, whose service the payload enables, is in the
    // image, keeps its source, and runs on an appliance installed from that image.
    built_iso(); // the kernel, build root and installer e2e_01 left in the cache
    let package = "truthdb-local-hello";
    let repository = common::LocalAptRepository::new(package, "trixie");
    let project = ProjectCopy::new();
    add_apt_repository(&project, &repository.url, &repository.key);
    // The default payload, plus the package and its service; healthy only with it running.
    let profile = "lb-config/payloads/postgresql.toml";
    let text = fs::read_to_string(project.path(profile)).unwrap();
    let text = text
        .replace("\"nftables\"]", &format!("\"nftables\", \"{package}\"]"))
        .replace("\"nftables.service\"]", &format!("\"nftables.service\", \"{package}.service\"]"))
        .replace(
            "health_check = \"pg_isready",
            &format!(
                "health_check = \"systemctl is-active --quiet {package}.service && test -s /run/{package} && pg_isready"
            ),
        );
    assert_eq!(text.matches(package).count(), 4, "the profile's fields moved: {text}");
    project.write(profile, &text);

    // zstd: the development compression; the kernel's timestamp: the cached kernel.
    let dist = project.path("dist");
    let out =
        project.xtask_at_epoch(&["iso", "--compression", "zstd", "--dist", dist.to_str().unwrap()], kernel_epoch());
    eprintln!("{}{}", stderr(&out), stdout(&out));
    assert!(out.status.success(), "the image with the extra repository did not build");
    let iso = dist.join(iso_name());
    let listed = fs::read_to_string(dist.join(iso_name().replace(".hybrid.iso", ".packages"))).unwrap();
    assert!(listed.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == [package, "1.0"]), "{listed}");

    // The repository stays configured in the image, and so on an installed appliance, with
    // its key: updates of its packages keep working.
    let scratch = tempfile::tempdir().unwrap();
    let squashfs = extract_squashfs(&iso, scratch.path());
    let cat = |path: &str| stdout(&run(Command::new("unsquashfs").arg("-cat").arg(&squashfs).arg(path)));
    assert_eq!(cat("etc/apt/sources.list.d/local.list"), format!("deb {} trixie main\n", repository.url));
    let listing = stdout(&run(Command::new("unsquashfs").args(["-l", "-d", ""]).arg(&squashfs).arg("etc/apt")));
    let keys: Vec<&str> = listing.lines().filter(|l| l.contains("trusted.gpg.d/local")).collect();
    assert_eq!(keys.len(), 1, "the repository's key is not in the image's /etc/apt/trusted.gpg.d:\n{listing}");
    assert_eq!(cat(keys[0].trim_start_matches('/')), repository.key, "the image's key is not the repository's");

    // Installed (a `disk` image: the installer engine, as on a server) and booted: healthy means
    // the package's service is active (and PostgreSQL up), then the install test's checks.
    let tested = xtask(&["install-test", "--iso", iso.to_str().unwrap(), "--no-refusals", "--no-install"]);
    let report = stdout(&tested);
    assert!(tested.status.success(), "the installed appliance failed its checks");
    assert!(report.contains("PASS disk-image boots alone") && report.contains("health=ok"), "{report}");
}
