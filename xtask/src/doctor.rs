//! `cargo xtask doctor`: checks the host tools each command needs and, as root on
//! Debian/Ubuntu, installs the missing ones with apt; otherwise prints the exact apt command.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::util::run::{Cmd, on_path};

/// What a host tool is needed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// `iso`: debootstrap the build root, enter it, sign.
    Build,
    /// `boot-test`: QEMU with SeaBIOS and OVMF.
    BootTest,
    /// `disk`: the installer engine on a loop device, then qemu-img.
    Disk,
    /// `install-test`: remaster the ISO with an install config, then reach the installed
    /// appliance's database and SSH from the host.
    InstallTest,
    /// `cargo test --workspace` compiles the graphical installer on the host (its C
    /// libraries' headers) and its keyboard tests compile real xkb layouts.
    WorkspaceTests,
    /// The suite's container build (`--container` with Podman; runc: crun refuses hybrid
    /// cgroups, see container.rs).
    ContainerTest,
    /// `repro-check`: diffoscope for a report when two builds differ.
    ReproCheck,
}

struct HostTool {
    /// A program on PATH, or an absolute path to a file.
    probe: &'static str,
    package: &'static str,
    purpose: Purpose,
}

const HOST_TOOLS: &[HostTool] = &[
    HostTool { probe: "debootstrap", package: "debootstrap", purpose: Purpose::Build },
    // Ubuntu's debootstrap needs Debian's keys to check a Debian suite.
    HostTool {
        probe: "/usr/share/keyrings/debian-archive-keyring.gpg",
        package: "debian-archive-keyring",
        purpose: Purpose::Build,
    },
    HostTool { probe: "unshare", package: "util-linux", purpose: Purpose::Build },
    HostTool { probe: "mount", package: "mount", purpose: Purpose::Build },
    HostTool { probe: "gpg", package: "gnupg", purpose: Purpose::Build },
    HostTool { probe: "gpgv", package: "gpgv", purpose: Purpose::Build },
    HostTool { probe: "git", package: "git", purpose: Purpose::Build },
    // Kernel source: fetched, checked and unpacked on the host, compiled in the build root.
    HostTool { probe: "curl", package: "curl", purpose: Purpose::Build },
    HostTool { probe: "patch", package: "patch", purpose: Purpose::Build },
    HostTool { probe: "xz", package: "xz-utils", purpose: Purpose::Build },
    HostTool { probe: "dpkg-deb", package: "dpkg", purpose: Purpose::Build },
    // The installer engine's tools, for `disk` (and the installer's tests, which write
    // partition tables into image files with the real sfdisk).
    HostTool { probe: "sfdisk", package: "fdisk", purpose: Purpose::Build },
    HostTool { probe: "sfdisk", package: "fdisk", purpose: Purpose::Disk },
    HostTool { probe: "partx", package: "util-linux", purpose: Purpose::Disk },
    // The SBOM reads our kernel's and the payload's .deb control fields.
    HostTool { probe: "dpkg-deb", package: "dpkg", purpose: Purpose::Build },
    // `repro-check` shows where two builds differ.
    HostTool { probe: "diffoscope", package: "diffoscope-minimal", purpose: Purpose::ReproCheck },
    HostTool { probe: "losetup", package: "mount", purpose: Purpose::Disk },
    HostTool { probe: "mkfs.vfat", package: "dosfstools", purpose: Purpose::Disk },
    HostTool { probe: "mcopy", package: "mtools", purpose: Purpose::Disk },
    // The ISO's root file system is extracted rather than mounted (a host kernel may lack
    // iso9660).
    HostTool { probe: "xorriso", package: "xorriso", purpose: Purpose::Disk },
    HostTool { probe: "mkfs.ext4", package: "e2fsprogs", purpose: Purpose::Disk },
    HostTool { probe: "unsquashfs", package: "squashfs-tools", purpose: Purpose::Disk },
    HostTool { probe: "qemu-img", package: "qemu-utils", purpose: Purpose::Disk },
    // `iso --vm-images` publishes the raw image zstd-compressed.
    HostTool { probe: "zstd", package: "zstd", purpose: Purpose::Disk },
    HostTool { probe: "qemu-system-x86_64", package: "qemu-system-x86", purpose: Purpose::BootTest },
    HostTool { probe: "/usr/share/OVMF/OVMF_CODE_4M.fd", package: "ovmf", purpose: Purpose::BootTest },
    HostTool { probe: "xorriso", package: "xorriso", purpose: Purpose::InstallTest },
    HostTool { probe: "psql", package: "postgresql-client", purpose: Purpose::InstallTest },
    HostTool { probe: "ssh", package: "openssh-client", purpose: Purpose::InstallTest },
    HostTool { probe: "ssh-keygen", package: "openssh-client", purpose: Purpose::InstallTest },
    // e2e_10 serves its signed apt repository with python3's http.server.
    HostTool { probe: "python3", package: "python3", purpose: Purpose::InstallTest },
    HostTool { probe: "podman", package: "podman", purpose: Purpose::ContainerTest },
    HostTool { probe: "runc", package: "runc", purpose: Purpose::ContainerTest },
    HostTool { probe: "cc", package: "gcc", purpose: Purpose::WorkspaceTests },
    HostTool { probe: "pkg-config", package: "pkg-config", purpose: Purpose::WorkspaceTests },
    HostTool { probe: "/usr/include/libinput.h", package: "libinput-dev", purpose: Purpose::WorkspaceTests },
    HostTool { probe: "/usr/include/libudev.h", package: "libudev-dev", purpose: Purpose::WorkspaceTests },
    HostTool {
        probe: "/usr/include/xkbcommon/xkbcommon.h",
        package: "libxkbcommon-dev",
        purpose: Purpose::WorkspaceTests,
    },
    HostTool { probe: "/usr/share/X11/xkb/symbols/de", package: "xkb-data", purpose: Purpose::WorkspaceTests },
];

fn present(tool: &HostTool) -> bool {
    if tool.probe.starts_with('/') { Path::new(tool.probe).exists() } else { on_path(tool.probe) }
}

/// The packages providing the missing tools for `purposes`.
pub fn missing_packages(purposes: &[Purpose]) -> Vec<&'static str> {
    let mut packages: Vec<&'static str> =
        HOST_TOOLS.iter().filter(|t| purposes.contains(&t.purpose) && !present(t)).map(|t| t.package).collect();
    packages.sort();
    packages.dedup();
    packages
}

/// How long an install of host tools waits for apt's locks: on a fresh machine another apt
/// (unattended-upgrades, cloud-init's package step, a second xtask) often holds them for a while,
/// and failing at once there would stop a build that only had to wait.
const APT_LOCK_WAIT_SECS: u32 = 600;

/// `apt-get` on the host, non-interactive, waiting for apt's locks rather than failing.
pub fn host_apt_get(args: &[&str]) -> Cmd {
    Cmd::new("apt-get")
        .args(["-o", &format!("DPkg::Lock::Timeout={APT_LOCK_WAIT_SECS}")])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
}

/// Makes sure the tools for `purposes` are there, installing them when we can.
pub fn ensure(purposes: &[Purpose]) -> Result<()> {
    let missing = missing_packages(purposes);
    if missing.is_empty() {
        return Ok(());
    }
    let apt_command = format!("apt-get install -y --no-install-recommends {}", missing.join(" "));
    let can_install = crate::util::host::is_root() && on_path("apt-get");
    if !can_install {
        bail!("missing host tools; install them with:\n  sudo apt-get update && sudo {apt_command}");
    }
    host_apt_get(&["update"]).run()?;
    // A second round, because an install can remove a tool that was there: a qemu-utils from
    // backports (as these machines have) goes when the archive's qemu-system-x86 comes in, and
    // asking again brings the matching one.
    let mut asked = Vec::new();
    let mut wanted = missing;
    for _round in 0..2 {
        eprintln!("installing missing host tools: {}", wanted.join(" "));
        host_apt_get(&["install", "-y", "--no-install-recommends"]).args(&wanted).run()?;
        asked.extend(wanted);
        wanted = missing_packages(purposes);
        if wanted.is_empty() {
            return Ok(());
        }
    }
    bail!("installed {} but still missing: {}", asked.join(" "), wanted.join(" "))
}

/// The archive suite that carries a newer QEMU for a Debian 12 host.
const BACKPORTS_SUITE: &str = "bookworm-backports";
/// Where the suite's backports source goes when the host has none.
const BACKPORTS_SOURCE_FILE: &str = "/etc/apt/sources.list.d/truthdb-os-bookworm-backports.sources";
/// The oldest QEMU the suite is content with. Under single-threaded TCG a live boot of the
/// image takes 117.6 s with bookworm's QEMU 7.2 and 90.4 s with QEMU 10.0 (BENCHMARKS.md,
/// "Where a live boot's time goes"): on a suite that is mostly VM time that is minutes.
const FAST_QEMU_MAJOR: u32 = 10;
/// QEMU's QXL display, which the hardware matrix's hw-qxl machine has: built in up to
/// bookworm's QEMU 7.2, a module of its own package from Debian's QEMU 10 on.
const QXL_MODULE: &str = "/usr/lib/x86_64-linux-gnu/qemu/hw-display-qxl.so";
const QXL_PACKAGE: &str = "qemu-system-modules-spice";

/// For the test suite: on a Debian 12 host whose QEMU is older than `FAST_QEMU_MAJOR`, installs
/// QEMU from bookworm-backports (adding that suite's source when the host has none; backports
/// are pinned low by the archive itself, so nothing else is taken from there). Elsewhere, or
/// when not root, the host's QEMU is used as it is: every test passes with 7.2, only slower.
pub fn prefer_fast_qemu() -> Result<()> {
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let installed = Cmd::new("qemu-system-x86_64").arg("--version").read().ok();
    let major = installed.as_deref().and_then(qemu_major);
    let can_install = crate::util::host::is_root() && on_path("apt-get");
    if wants_backported_qemu(&os_release, major) {
        if !can_install {
            eprintln!(
                "note: QEMU {FAST_QEMU_MAJOR} from {BACKPORTS_SUITE} boots the image under TCG about a quarter faster; as \
                 root: apt-get install -t {BACKPORTS_SUITE} qemu-system-x86 qemu-utils {QXL_PACKAGE}"
            );
            return Ok(());
        }
        if !has_backports_source()? {
            eprintln!("adding the {BACKPORTS_SUITE} source for a faster QEMU: {BACKPORTS_SOURCE_FILE}");
            std::fs::write(BACKPORTS_SOURCE_FILE, backports_source())
                .with_context(|| format!("writing {BACKPORTS_SOURCE_FILE}"))?;
        }
        eprintln!("installing QEMU {FAST_QEMU_MAJOR} from {BACKPORTS_SUITE} (the host has {})", major.unwrap_or(0));
        host_apt_get(&["update"]).run()?;
        host_apt_get(&["install", "-y", "--no-install-recommends", "-t", BACKPORTS_SUITE])
            .args(["qemu-system-x86", "qemu-utils", QXL_PACKAGE])
            .run()?;
        return Ok(());
    }
    // A QEMU 10 already there (trixie's, or a backport installed before) may lack the QXL module.
    if major.is_some_and(|m| m >= FAST_QEMU_MAJOR) && !Path::new(QXL_MODULE).exists() {
        if !can_install {
            eprintln!("note: the hardware test's QXL machine needs {QXL_PACKAGE} (apt-get install {QXL_PACKAGE})");
            return Ok(());
        }
        let backport = installed.as_deref().is_some_and(|v| v.contains("~bpo12"));
        eprintln!("installing {QXL_PACKAGE}: QEMU {} keeps its QXL display there", major.unwrap_or(0));
        let mut install = host_apt_get(&["install", "-y", "--no-install-recommends"]);
        if backport {
            install = install.args(["-t", BACKPORTS_SUITE]);
        }
        install.arg(QXL_PACKAGE).run()?;
    }
    Ok(())
}

/// The major version in `qemu-system-x86_64 --version`'s "QEMU emulator version 7.2.22 (...)".
fn qemu_major(version_output: &str) -> Option<u32> {
    let rest = version_output.split("version ").nth(1)?;
    rest.split(['.', ' ']).next()?.parse().ok()
}

fn wants_backported_qemu(os_release: &str, installed_major: Option<u32>) -> bool {
    let bookworm = os_release.lines().any(|l| l.trim() == "VERSION_CODENAME=bookworm")
        && os_release.lines().any(|l| l.trim() == "ID=debian");
    bookworm && installed_major.is_none_or(|major| major < FAST_QEMU_MAJOR)
}

fn has_backports_source() -> Result<bool> {
    let mut files = vec![std::path::PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    Ok(files.iter().filter_map(|f| std::fs::read_to_string(f).ok()).any(|text| names_backports(&text)))
}

/// Whether an apt source file (one-line or deb822) names the backports suite outside comments.
fn names_backports(source_text: &str) -> bool {
    source_text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .any(|l| l.split_whitespace().any(|word| word == BACKPORTS_SUITE))
}

fn backports_source() -> String {
    format!(
        "# Added by TruthDB OS's `cargo xtask test` for a newer QEMU (see doctor.rs).\n\
         Types: deb\n\
         URIs: http://deb.debian.org/debian\n\
         Suites: {BACKPORTS_SUITE}\n\
         Components: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
}

/// `cargo xtask doctor`.
#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// Install missing tools with apt (as root); on Debian 12 also QEMU 10 from bookworm-backports,
    /// which boots the image under TCG about a quarter faster.
    #[arg(long)]
    install: bool,
    /// Print each tool, its package, what it is for and whether it is present, as JSON on
    /// stdout (after any --install).
    #[arg(long)]
    json: bool,
}

impl DoctorArgs {
    pub fn run(self) -> Result<()> {
        if !self.json {
            return run(self.install);
        }
        if self.install {
            ensure(&ALL_PURPOSES)?;
            prefer_fast_qemu()?;
        }
        println!("{}", serde_json::to_string_pretty(&report())?);
        if !missing_packages(&ALL_PURPOSES).is_empty() {
            bail!("missing host tools: run `cargo xtask doctor --install` as root");
        }
        Ok(())
    }
}

/// The purposes `doctor --install` installs for (the container test's engine is installed by
/// `cargo xtask test` only: a developer chooses their own engine).
const ALL_PURPOSES: [Purpose; 5] =
    [Purpose::Build, Purpose::WorkspaceTests, Purpose::BootTest, Purpose::Disk, Purpose::InstallTest];

/// The host tools and whether each is present, for `doctor --json`.
fn report() -> serde_json::Value {
    let tools: Vec<serde_json::Value> = HOST_TOOLS
        .iter()
        .map(|tool| {
            serde_json::json!({
                "probe": tool.probe,
                "package": tool.package,
                "purpose": format!("{:?}", tool.purpose),
                "present": present(tool),
            })
        })
        .collect();
    serde_json::json!({ "root": crate::util::host::is_root(), "tools": tools })
}

fn run(install: bool) -> Result<()> {
    let all = ALL_PURPOSES;
    for tool in HOST_TOOLS {
        let mark = if present(tool) { "ok     " } else { "MISSING" };
        println!("{mark} {:<48} (package {}, for {:?})", tool.probe, tool.package, tool.purpose);
    }
    if !crate::util::host::is_root() {
        println!("note: `iso` needs root (debootstrap, chroot, mounts); it re-runs itself with sudo when it can");
    }
    if install {
        ensure(&all)?;
        prefer_fast_qemu()?;
        println!("all host tools present");
    } else if !missing_packages(&all).is_empty() {
        bail!("missing host tools: run `cargo xtask doctor --install` as root");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemus_major_version_is_read_from_its_banner() {
        assert_eq!(qemu_major("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n"), Some(7));
        assert_eq!(qemu_major("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)"), Some(10));
        assert_eq!(qemu_major("something else"), None);
    }

    #[test]
    fn only_a_debian_12_host_with_an_older_qemu_takes_the_backport() {
        let bookworm = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_CODENAME=bookworm\n";
        let trixie = "ID=debian\nVERSION_CODENAME=trixie\n";
        let ubuntu = "ID=ubuntu\nVERSION_CODENAME=bookworm\n";
        assert!(wants_backported_qemu(bookworm, Some(7)));
        assert!(wants_backported_qemu(bookworm, None));
        assert!(!wants_backported_qemu(bookworm, Some(10)));
        assert!(!wants_backported_qemu(trixie, Some(7)));
        assert!(!wants_backported_qemu(ubuntu, Some(7)));
    }

    #[test]
    fn a_backports_source_counts_in_either_format_but_not_in_a_comment() {
        assert!(names_backports("deb http://deb.debian.org/debian bookworm-backports main\n"));
        assert!(names_backports("Types: deb\nSuites: bookworm bookworm-updates bookworm-backports\n"));
        assert!(names_backports(&backports_source()));
        assert!(!names_backports("# deb http://deb.debian.org/debian bookworm-backports main\n"));
        assert!(!names_backports("Suites: bookworm bookworm-updates\n"));
    }
}
