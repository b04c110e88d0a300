//! `--container`: runs an xtask command inside the builder image, with Docker or Podman.
//!
//! The builder image (`xtask/container/`) is Debian trixie packages only, the Rust toolchain
//! included; it is tagged `<version>-<digest of its definition and base>`, so a changed
//! Containerfile is a new image. The command runs there as it would natively, given the same
//! arguments minus the container flags, by this very xtask binary on a Linux host (when it
//! starts in the builder), or else by xtask compiled in the container from the checkout (macOS
//! hosts). What the container sees:
//!
//! - the checkout, read-only, at the same path as on the host (paths in arguments and in
//!   `CARGO_MANIFEST_DIR` mean the same on both sides);
//! - `target/` of the checkout as a named volume per checkout (cargo's output and xtask's work
//!   directory: the build never runs on a bind mount, which broke the kernel unpack on macOS),
//!   with `target/truthdb-os/logs` bound back to the host so the logs come out;
//! - `dist/` (or `--dist`), read-write: the one result, published atomically as natively;
//! - the cache (build roots, kernels, chroots, the installer's cargo target) as the named volume
//!   `truthdb-os-cache`, or on a Linux host the host's own cache with `--cache-dir`;
//! - cargo's home (the crates) as the named volume `truthdb-os-cargo`;
//! - the signing key as today's environment variables, passed by name (`--env NAME`: the value
//!   never appears in an argument list), or its file bound read-only.
//!
//! The container is privileged and rootful: debootstrap makes device nodes, the build root is
//! a private mount and PID namespace with its own mounts, and `disk` attaches loop devices.
//! Its entry point (`xtask/container/entry.sh`) refuses at once when those are missing, and
//! ties the container's life to this process through stdin (see [`Cmd::run_with_lifeline`]).
//!
//! Nothing here is Linux-only: this side runs on macOS and Windows hosts too.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::project::{Project, ProjectArgs};
use crate::util::digest::Hasher;
use crate::util::run::Cmd;

/// The base image by default: Debian trixie from the registry.
pub const DEFAULT_BASE: &str = "docker.io/library/debian:trixie";
/// `--base local`: a trixie root file system made here with debootstrap and imported.
pub const LOCAL_BASE: &str = "local";
const LOCAL_BASE_TAG: &str = "localhost/truthdb-os-base:trixie";
/// Exit code of entry.sh when the container lacks a privilege the pipeline needs.
const UNPRIVILEGED_EXIT: i32 = 70;
const UNPRIVILEGED_MARK: &str = "TRUTHDB-CONTAINER-UNPRIVILEGED: ";
/// Named volumes, shared by every checkout on the engine: the cache, cargo's home (crates) and
/// cargo's output (xtask compiled in the container; dependencies are shared, each checkout's
/// own crates recompile when another checkout used it last).
const CACHE_VOLUME: &str = "truthdb-os-cache";
const CARGO_VOLUME: &str = "truthdb-os-cargo";
const CARGO_TARGET_VOLUME: &str = "truthdb-os-cargo-target";
const CARGO_TARGET_IN_CONTAINER: &str = "/var/lib/truthdb-os/cargo-target";
/// Where the cache is inside the container (the native default).
const CACHE_IN_CONTAINER: &str = crate::project::DEFAULT_CACHE_DIR;
/// Environment passed into the container by name, when set on the host.
const PASSED_ENV: &[&str] =
    &[crate::stages::signing::KEY_ENV, crate::stages::signing::PASSPHRASE_ENV, "SOURCE_DATE_EPOCH", "CI", "NO_COLOR"];
const KEY_FILE_IN_CONTAINER: &str = "/run/truthdb-os/signing-key.asc";
/// Where a Linux host's own xtask binary is bound when it can run in the builder.
const HOST_XTASK_IN_CONTAINER: &str = "/usr/local/bin/truthdb-xtask";

/// The container switches, accepted before or after the command.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ContainerArgs {
    /// Run the command inside the builder image (Docker or Podman), touching nothing on this
    /// host but dist/ and the logs. Chosen by itself where the host cannot run the pipeline.
    #[arg(long, global = true)]
    pub container: bool,
    /// Container engine (default: the first of docker and podman that answers).
    #[arg(long, global = true, value_enum, value_name = "ENGINE")]
    pub engine: Option<EngineKind>,
    /// Base of the builder image: an image name (default: docker.io/library/debian:trixie), or
    /// `local` for a trixie root file system made here with debootstrap (no registry needed).
    #[arg(long, global = true, value_name = "IMAGE")]
    pub base: Option<String>,
    /// Use this builder image (e.g. ghcr.io/<owner>/truthdb-os-builder:<tag>) instead of
    /// building one from xtask/container/.
    #[arg(long, global = true, value_name = "IMAGE")]
    pub builder_image: Option<String>,
    /// With --container on a Linux host: use this host directory as the cache (e.g.
    /// /var/cache/truthdb-os, shared with native builds) instead of the `truthdb-os-cache` volume.
    #[arg(long, global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

impl ContainerArgs {
    /// Whether any container-only switch was given (they mean nothing without a container).
    pub fn any_option(&self) -> Option<&'static str> {
        if self.engine.is_some() {
            Some("--engine")
        } else if self.base.is_some() {
            Some("--base")
        } else if self.builder_image.is_some() {
            Some("--builder-image")
        } else if self.cache_dir.is_some() {
            Some("--cache-dir")
        } else {
            None
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Docker,
    Podman,
}

impl EngineKind {
    fn program(self) -> &'static str {
        match self {
            EngineKind::Docker => "docker",
            EngineKind::Podman => "podman",
        }
    }
}

/// A container engine that answered, with what the run needs to know about it.
#[derive(Debug)]
pub struct Engine {
    pub kind: EngineKind,
    /// Extra flags for `run` and `build` on this host (see [`host_workarounds`]).
    host_flags: Vec<String>,
    /// The engine runs amd64 images under emulation (an arm64 host).
    emulated: bool,
}

/// Why the pipeline cannot run natively here, if it cannot: then `--container` is chosen.
pub fn native_unsupported_reason() -> Option<String> {
    let has = crate::util::run::on_path;
    why_not_native(std::env::consts::OS, has("apt-get"), has("debootstrap"))
}

fn why_not_native(os: &str, has_apt: bool, has_debootstrap: bool) -> Option<String> {
    if os != "linux" {
        return Some(format!("this host runs {os}, and the pipeline runs on Linux"));
    }
    if !has_apt && !has_debootstrap {
        return Some("this Linux host has neither apt nor debootstrap".to_owned());
    }
    None
}

/// Finds the engine: the one asked for, or the first of docker and podman that answers.
pub fn detect_engine(choice: Option<EngineKind>) -> Result<Engine> {
    let candidates = match choice {
        Some(kind) => vec![kind],
        None => vec![EngineKind::Docker, EngineKind::Podman],
    };
    let installed: Vec<EngineKind> =
        candidates.into_iter().filter(|k| crate::util::run::on_path(k.program())).collect();
    if installed.is_empty() {
        let which = choice.map_or("Docker or Podman".to_owned(), |k| k.program().to_owned());
        bail!(
            "no container engine found: {which} is not on PATH. Install Docker (Docker Desktop on macOS and \
             Windows) or Podman (`apt-get install podman runc` on Debian), or build natively on a Debian or \
             Ubuntu host without --container"
        );
    }
    let mut failures = Vec::new();
    for kind in installed {
        match probe_engine(kind) {
            Ok(engine) => return Ok(engine),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    bail!("{}", failures.join("\n"))
}

fn probe_engine(kind: EngineKind) -> Result<Engine> {
    let program = kind.program();
    // One `info` answers: is the daemon there, what architecture and kind of containers does it
    // run, is it rootless.
    let format = match kind {
        EngineKind::Docker => "{{.Architecture}} {{.OSType}} {{json .SecurityOptions}}",
        EngineKind::Podman => "{{.Host.Arch}} {{.Host.OS}} {{.Host.Security.Rootless}}",
    };
    let out = Cmd::new(program).args(["info", "--format", format]).output_unchecked()?;
    if !out.status.success() {
        let said = crate::util::run::tail(String::from_utf8_lossy(&out.stderr).trim(), 3);
        let start = match kind {
            EngineKind::Docker => "start Docker Desktop, or `systemctl start docker` on Linux",
            EngineKind::Podman => "on macOS and Windows `podman machine start`; on Linux run it as root",
        };
        bail!("{program} is installed but does not answer (`{program} info` failed: {said}): {start}");
    }
    engine_from_info(kind, String::from_utf8_lossy(&out.stdout).trim())
}

/// The engine as its `info` line (see [`probe_engine`]) describes it, or why it cannot build.
fn engine_from_info(kind: EngineKind, info: &str) -> Result<Engine> {
    let program = kind.program();
    let mut words = info.splitn(3, ' ');
    let (arch, os, security) = (words.next().unwrap_or(""), words.next().unwrap_or(""), words.next().unwrap_or(""));
    if os == "windows" {
        bail!(
            "{program} runs Windows containers here, and the builder image is a Linux image: switch Docker \
             Desktop to Linux containers (its tray menu, \"Switch to Linux containers\") and run again"
        );
    }
    let rootless = match kind {
        EngineKind::Docker => security.contains("rootless"),
        EngineKind::Podman => security.trim() == "true",
    };
    if rootless {
        bail!(
            "{program} runs rootless here: a rootless engine cannot make loop devices, device nodes \
             (debootstrap) or the build root's mounts. Use a rootful engine: `sudo {program} ...` \
             (run `sudo cargo xtask --container ...`) or Docker with its root daemon"
        );
    }
    let emulated = matches!(arch, "arm64" | "aarch64");
    let mut host_flags = host_workarounds(kind);
    if emulated {
        host_flags.extend(["--platform".to_owned(), "linux/amd64".to_owned()]);
    }
    Ok(Engine { kind, host_flags, emulated })
}

/// Flags this host needs, worked out here rather than asked of the user (measured on Debian 12
/// hosts, see ../shared/reference.md): Podman's default runtime crun refuses hybrid cgroups,
/// runc works; and Podman raises the container's open-files and process limits above the
/// host's hard limits by default, which fails without CAP_SYS_RESOURCE, so they are set to
/// the hard limits (processes at most 32768: Podman lowers its own limit to that first).
fn host_workarounds(kind: EngineKind) -> Vec<String> {
    let mut flags = Vec::new();
    if kind != EngineKind::Podman || std::env::consts::OS != "linux" {
        return flags;
    }
    let unified_only = Path::new("/sys/fs/cgroup/cgroup.controllers").is_file();
    if !unified_only && crate::util::run::on_path("runc") {
        flags.extend(["--runtime".to_owned(), "runc".to_owned()]);
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        if let Some(nofile) = hard_limit(&limits, "Max open files") {
            flags.extend(["--ulimit".to_owned(), format!("nofile={nofile}:{nofile}")]);
        }
        let nproc = hard_limit(&limits, "Max processes").unwrap_or(u64::MAX).min(32768);
        flags.extend(["--ulimit".to_owned(), format!("nproc={nproc}:{nproc}")]);
    }
    flags
}

/// Linux capabilities by number, as Docker names them.
const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// `--privileged`, or where that cannot work, the same by its parts. Docker's `--privileged`
/// asks for every capability and fails ("unable to apply caps") on a host whose bounding set
/// lacks one (these build machines lack SYS_RESOURCE; Podman leaves such ones out itself), and
/// ignores `--cap-drop` beside it. Then: every capability the host has, no seccomp or AppArmor
/// confinement, /proc unmasked, every device allowed.
fn privilege_flags(kind: EngineKind) -> Vec<String> {
    let missing = match kind {
        EngineKind::Docker => {
            std::fs::read_to_string("/proc/self/status").map(|s| missing_capabilities(&s)).unwrap_or_default()
        }
        EngineKind::Podman => Vec::new(),
    };
    // The host's /dev itself, not the engine's copy made at start: the partitions of a loop
    // device `disk` attaches (/dev/loop0p1) appear only there.
    let host_dev = ["--volume".to_owned(), "/dev:/dev".to_owned()];
    if missing.is_empty() {
        return ["--privileged".to_owned()].into_iter().chain(host_dev).collect();
    }
    let mut flags = vec!["--cap-add".to_owned(), "ALL".to_owned()];
    for capability in missing {
        flags.extend(["--cap-drop".to_owned(), capability.to_owned()]);
    }
    for option in ["seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"] {
        flags.extend(["--security-opt".to_owned(), option.to_owned()]);
    }
    flags.extend(["--device-cgroup-rule".to_owned(), "a *:* rwm".to_owned()]);
    flags.extend(host_dev);
    flags
}

/// The capabilities missing from this process's bounding set (`CapBnd:` of /proc/self/status).
fn missing_capabilities(status: &str) -> Vec<&'static str> {
    let Some(bounding) = status.lines().find_map(|l| l.strip_prefix("CapBnd:")) else {
        return Vec::new();
    };
    let Ok(bits) = u64::from_str_radix(bounding.trim(), 16) else {
        return Vec::new();
    };
    CAPABILITIES.iter().enumerate().filter(|(bit, _)| bits >> bit & 1 == 0).map(|(_, name)| *name).collect()
}

/// The hard limit on a line of /proc/self/limits ("Max open files  1024  20000  files").
fn hard_limit(limits: &str, name: &str) -> Option<u64> {
    let rest = limits.lines().find_map(|l| l.strip_prefix(name))?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The builder image's definition: xtask/container/.
fn definition_dir(project: &Project) -> PathBuf {
    project.root.join("xtask/container")
}

/// `localhost/truthdb-os-builder:<version>-<digest>`: the digest covers every file of the
/// definition and the base it is built on.
pub fn builder_tag(project: &Project, base: &str) -> Result<String> {
    let dir = definition_dir(project);
    let mut hasher = Hasher::new();
    hasher.field("base", base);
    hasher
        .tree("definition", &dir)
        .with_context(|| format!("reading the builder image's definition {}", dir.display()))?;
    Ok(format!("localhost/truthdb-os-builder:{}-{}", project.version, &hasher.hex()[..12]))
}

fn image_exists(engine: &Engine, image: &str) -> Result<bool> {
    let out = Cmd::new(engine.kind.program()).args(["image", "inspect", image]).output_unchecked()?;
    Ok(out.status.success())
}

/// The builder image to run: `--builder-image`, or the one built from xtask/container/ (built
/// now unless the engine already has it).
pub fn builder_image(project: &Project, engine: &Engine, args: &ContainerArgs) -> Result<String> {
    if let Some(image) = &args.builder_image {
        return Ok(image.clone());
    }
    let base = args.base.clone().unwrap_or_else(|| DEFAULT_BASE.to_owned());
    let tag = builder_tag(project, &base)?;
    if image_exists(engine, &tag)? {
        eprintln!("builder image {tag}: present");
        return Ok(tag);
    }
    let base_image = if base == LOCAL_BASE { local_base(project, engine)? } else { base };
    let log = project.logs_dir().join("builder-image.log");
    std::fs::create_dir_all(project.logs_dir())?;
    eprintln!("building the builder image {tag} on {base_image} (log: {})", log.display());
    let started = std::time::Instant::now();
    let dir = definition_dir(project);
    Cmd::new(engine.kind.program())
        .arg("build")
        .args(&engine.host_flags)
        .args(["--build-arg", &format!("BASE={base_image}"), "--tag", &tag, "--file"])
        .arg(dir.join("Containerfile"))
        .arg(&dir)
        .run_logged(&log, |_| {})
        .with_context(|| format!("building the builder image (log: {})", log.display()))?;
    eprintln!("built the builder image {tag} in {}", crate::util::progress::format_duration(started.elapsed()));
    remove_older_builders(engine, &tag);
    Ok(tag)
}

/// Every builder image is 1.7 GB: once a new one is built, the engine's older ones (earlier
/// definitions or versions) go. One still in use by a running build stays (the engine refuses).
fn remove_older_builders(engine: &Engine, keep: &str) {
    let repository = keep.split_once(':').map_or(keep, |(repository, _)| repository);
    let listed = Cmd::new(engine.kind.program()).args(["images", "--format", "{{.Repository}}:{{.Tag}}"]).read();
    for image in listed.unwrap_or_default().lines() {
        let older = image.starts_with(&format!("{repository}:")) && image != keep;
        if older
            && Cmd::new(engine.kind.program())
                .args(["image", "rm", image])
                .output_unchecked()
                .is_ok_and(|o| o.status.success())
        {
            eprintln!("removed the older builder image {image}");
        }
    }
}

/// `--base local`: a Debian trixie minbase made with debootstrap on this host and imported,
/// for networks that reach a Debian mirror but no container registry. Made once per engine.
fn local_base(project: &Project, engine: &Engine) -> Result<String> {
    if image_exists(engine, LOCAL_BASE_TAG)? {
        return Ok(LOCAL_BASE_TAG.to_owned());
    }
    if std::env::consts::OS != "linux" || !crate::util::run::on_path("debootstrap") || !crate::util::host::is_root() {
        bail!(
            "--base local makes the base with debootstrap, as root, on a Linux host; here use a \
             registry's image (the default {DEFAULT_BASE}) or `--base IMAGE`"
        );
    }
    let cache = crate::project::cache_dir();
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("builder-base-")
        .tempdir_in(&cache)
        .with_context(|| format!("making a scratch directory in {}", cache.display()))?;
    let root = scratch.path().join("root");
    let tarball = scratch.path().join("root.tar");
    let log = project.logs_dir().join("builder-base.log");
    std::fs::create_dir_all(project.logs_dir())?;
    let mirror = &project.appliance.mirrors.archive;
    eprintln!("making the local base {LOCAL_BASE_TAG}: debootstrap trixie from {mirror} (log: {})", log.display());
    Cmd::new("debootstrap")
        .args(["--variant=minbase", "trixie"])
        .arg(&root)
        .arg(mirror)
        .run_logged(&log, |_| {})
        .with_context(|| format!("debootstrap of the local base (log: {})", log.display()))?;
    Cmd::new("tar").args(["--numeric-owner", "-C"]).arg(&root).args(["-cf"]).arg(&tarball).arg(".").run()?;
    Cmd::new(engine.kind.program()).arg("import").arg(&tarball).arg(LOCAL_BASE_TAG).run()?;
    Ok(LOCAL_BASE_TAG.to_owned())
}

/// Debian's bundle of trusted certificates, in the host and in the builder.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The certificates a Linux host trusts, for cargo in the container (crates.io is its one HTTPS
/// peer): on a network that inspects TLS with its own authority (a company proxy; these build
/// machines) the builder's stock bundle fails where the host succeeds. Docker Desktop and
/// Podman machine hosts bring their own; there this is `None`.
fn host_ca_bundle() -> Option<PathBuf> {
    if std::env::consts::OS != "linux" {
        return None;
    }
    let path = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from).unwrap_or_else(|| CA_BUNDLE.into());
    path.canonicalize().ok().filter(|p| p.is_file())
}

/// One mount of the run.
#[derive(Debug)]
enum Mount {
    /// A host file or directory at `target`.
    Bind { source: String, target: String, read_only: bool },
    /// A named volume: kept between runs.
    Volume { name: &'static str, target: String },
    /// A volume of this run only, removed with the container (the engine's anonymous volume).
    Scratch { target: String },
}

impl Mount {
    fn bind(source: impl Into<String>, target: impl Into<String>, read_only: bool) -> Mount {
        Mount::Bind { source: source.into(), target: target.into(), read_only }
    }

    fn flags(&self, engine: EngineKind) -> Vec<String> {
        // Podman mounts volumes nodev and nosuid; the build directory holds the image's chroot,
        // whose /dev/null and setuid programs must work, so volumes are mounted with both.
        let podman = engine == EngineKind::Podman;
        match self {
            Mount::Bind { source, target, read_only } => {
                vec!["--volume".into(), format!("{source}:{target}{}", if *read_only { ":ro" } else { "" })]
            }
            Mount::Volume { name, target } => {
                vec!["--volume".into(), format!("{name}:{target}{}", if podman { ":dev,suid" } else { "" })]
            }
            Mount::Scratch { target } => {
                vec![
                    "--mount".into(),
                    format!("type=volume,destination={target}{}", if podman { ",dev=true,suid=true" } else { "" }),
                ]
            }
        }
    }
}

/// Options that name host paths: each is made absolute and its path bound into the container
/// at the same place (read-only for inputs, read-write for outputs).
const PATH_OPTIONS: &[(&str, PathRole)] = &[
    ("--dist", PathRole::OutputDir),
    ("--iso", PathRole::InputFile),
    ("--config", PathRole::InputFile),
    ("--output", PathRole::OutputFile),
    ("--project", PathRole::Checkout),
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum PathRole {
    InputFile,
    OutputDir,
    OutputFile,
    /// The checkout itself: mounted anyway; made absolute so it means the same inside.
    Checkout,
}

/// A host path an argument names, and what the command does with it.
type NamedPath = (PathBuf, PathRole);

/// The arguments for xtask in the container: the host's, without the container switches, with
/// path options made absolute; and the paths they name, to be mounted.
fn inner_arguments(host_args: &[String], cwd: &Path) -> Result<(Vec<String>, Vec<NamedPath>)> {
    const CONTAINER_FLAGS_WITH_VALUE: &[&str] = &["--engine", "--base", "--builder-image", "--cache-dir"];
    let mut inner = Vec::new();
    let mut paths = Vec::new();
    let mut i = 0;
    while i < host_args.len() {
        let arg = &host_args[i];
        let (name, inline_value) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        if name == "--container" {
            i += 1;
            continue;
        }
        if CONTAINER_FLAGS_WITH_VALUE.contains(&name) {
            i += if inline_value.is_some() { 1 } else { 2 };
            continue;
        }
        if let Some((_, role)) = PATH_OPTIONS.iter().find(|(option, _)| *option == name) {
            let value = match inline_value {
                Some(v) => v,
                None => {
                    i += 1;
                    host_args.get(i).cloned().with_context(|| format!("{name} needs a value"))?
                }
            };
            let path = cwd.join(&value);
            paths.push((path.clone(), *role));
            inner.push(name.to_owned());
            inner.push(path.display().to_string());
            i += 1;
            continue;
        }
        inner.push(arg.clone());
        i += 1;
    }
    Ok((inner, paths))
}

/// Runs the command in the builder image when asked to (`--container`), or when this host
/// cannot run the pipeline itself (with a one-line notice). `command` names a command that can
/// run there (`None`: it cannot); `takes_container_options` when the command reads the
/// container flags itself (`builder-image`). `None` means: run it here.
pub fn run_if_wanted(
    args: &ContainerArgs,
    project_args: &ProjectArgs,
    command: Option<&'static str>,
    takes_container_options: bool,
) -> Result<Option<i32>> {
    let auto = match (args.container, command) {
        (true, None) => crate::util::usage_error!(
            "--container: this command runs on the host only (`cargo xtask vm` needs this machine's \
             display and terminal; the others need no build tools)"
        ),
        (true, Some(_)) => None,
        (false, Some(_)) => native_unsupported_reason(),
        (false, None) => None,
    };
    if !args.container && auto.is_none() {
        if let Some(option) = args.any_option().filter(|_| !takes_container_options) {
            crate::util::usage_error!("{option} applies to container builds: add --container");
        }
        return Ok(None);
    }
    if let Some(reason) = auto {
        eprintln!("note: {reason}: running in the builder container (as with --container)");
    }
    let project = project_args.load()?;
    let host_args: Vec<String> = std::env::args().skip(1).collect();
    Ok(Some(run(&project, args, &host_args, command.unwrap_or("xtask"))?))
}

/// `cargo xtask builder-image`.
#[derive(Debug, clap::Args)]
pub struct BuilderImageArgs {}

impl BuilderImageArgs {
    pub fn run(self, project: &Project, args: &ContainerArgs) -> Result<()> {
        let engine = detect_engine(args.engine)?;
        println!("{}", builder_image(project, &engine, args)?);
        Ok(())
    }
}

/// Runs `host_args` (xtask's arguments, without the program) in the builder image and returns
/// xtask's exit code there. `command` names the command for messages.
pub fn run(project: &Project, args: &ContainerArgs, host_args: &[String], command: &str) -> Result<i32> {
    if args.cache_dir.is_some() && std::env::consts::OS != "linux" {
        crate::util::usage_error!(
            "--cache-dir mounts a host directory as the cache, which only a Linux host can share; leave it out"
        );
    }
    let engine = detect_engine(args.engine)?;
    if engine.emulated {
        eprintln!(
            "note: this {} runs arm64; the builder image is amd64 and runs under emulation: expect the \
             build several times slower than on an amd64 host (the kernel compile most of all)",
            engine.kind.program()
        );
    }
    let image = builder_image(project, &engine, args)?;
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let (inner, paths) = inner_arguments(host_args, &cwd)?;

    let root = project.root.display().to_string();
    let logs = project.logs_dir();
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut mounts = vec![
        Mount::bind(&root, &root, true),
        // xtask's work directory (target/truthdb-os) lives in the checkout's target/: here a
        // volume of this run, never the host's (the checkout is read-only, and a build on a
        // macOS bind mount breaks); its logs/ is bound back.
        Mount::Scratch { target: project.root.join("target").display().to_string() },
        Mount::bind(logs.display().to_string(), logs.display().to_string(), false),
        Mount::Volume { name: CARGO_VOLUME, target: "/root/.cargo".to_owned() },
        Mount::Volume { name: CARGO_TARGET_VOLUME, target: CARGO_TARGET_IN_CONTAINER.to_owned() },
    ];
    mounts.push(match &args.cache_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating the cache directory {}", dir.display()))?;
            Mount::bind(dir.canonicalize()?.display().to_string(), CACHE_IN_CONTAINER, false)
        }
        None => Mount::Volume { name: CACHE_VOLUME, target: CACHE_IN_CONTAINER.to_owned() },
    });
    // dist/ always: `iso` publishes there and the VM commands read the ISO from it.
    let dist = project.default_dist_dir();
    let mut writable: BTreeSet<PathBuf> = BTreeSet::from([dist]);
    for (path, role) in &paths {
        match role {
            PathRole::OutputDir => {
                writable.insert(path.clone());
            }
            PathRole::OutputFile => {
                writable.insert(path.parent().map(Path::to_owned).unwrap_or_else(|| cwd.clone()));
            }
            PathRole::Checkout => {}
            // Bound even inside the checkout: its target/ is a volume in the container.
            PathRole::InputFile => {
                let source = path.canonicalize().with_context(|| format!("{}", path.display()))?;
                if !source.is_file() {
                    bail!("{}: not a file", path.display());
                }
                mounts.push(Mount::bind(source.display().to_string(), path.display().to_string(), true));
            }
        }
    }
    for dir in writable {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let source = dir.canonicalize()?.display().to_string();
        mounts.push(Mount::bind(source, dir.display().to_string(), false));
    }
    if let Some(bundle) = host_ca_bundle() {
        mounts.push(Mount::bind(bundle.display().to_string(), CA_BUNDLE.to_owned(), true));
    }
    let mut env_flags = Vec::new();
    let mut env_values = Vec::new();
    for name in PASSED_ENV {
        if let Some(value) = std::env::var_os(name) {
            env_flags.extend(["--env".to_owned(), (*name).to_owned()]);
            env_values.push((*name, value));
        }
    }
    if let Some(file) = std::env::var_os(crate::stages::signing::KEY_FILE_ENV) {
        let file = PathBuf::from(file);
        let file = file.canonicalize().with_context(|| {
            format!("the signing key {} (from ${})", file.display(), crate::stages::signing::KEY_FILE_ENV)
        })?;
        mounts.push(Mount::bind(file.display().to_string(), KEY_FILE_IN_CONTAINER.to_owned(), true));
        env_flags
            .extend(["--env".to_owned(), format!("{}={KEY_FILE_IN_CONTAINER}", crate::stages::signing::KEY_FILE_ENV)]);
    }
    let workdir = if cwd.starts_with(&project.root) { cwd.clone() } else { project.root.clone() };
    let name = format!("truthdb-os-{}-{}", command, std::process::id());
    let program = engine.kind.program();

    let run_base = |name: &str| {
        let mut cmd = Cmd::new(program)
            .args(["run", "--rm", "--interactive", "--name", name])
            // Privileged and rootful: debootstrap's mknod, the build root's private mount and
            // PID namespace and its mounts, and loop devices for `disk`. entry.sh checks each.
            .args(privilege_flags(engine.kind))
            .args(&engine.host_flags);
        for mount in &mounts {
            cmd = cmd.args(mount.flags(engine.kind));
        }
        cmd = cmd
            .args(&env_flags)
            .args(["--env", &format!("CARGO_TARGET_DIR={CARGO_TARGET_IN_CONTAINER}")])
            .args(["--workdir", &workdir.display().to_string()]);
        for (key, value) in &env_values {
            cmd = cmd.env(key, value);
        }
        cmd
    };

    // The privileges first, in a container of a second: a refusal now, not after the compile.
    // On a Linux host the same probe asks whether this very xtask binary starts in the builder
    // (bound read-only): then it runs there as it is, with no second compile and no other
    // version; elsewhere (macOS, another architecture, a host C library newer than the
    // builder's) xtask is compiled in the container from the checkout.
    let host_binary = std::env::current_exe()
        .ok()
        .filter(|_| std::env::consts::OS == "linux" && std::env::consts::ARCH == "x86_64" && !engine.emulated);
    let probe = |with_binary: bool| {
        let mut cmd = run_base(&format!("{name}-probe"));
        if let (true, Some(binary)) = (with_binary, &host_binary) {
            cmd = cmd.args(Mount::bind(binary.display().to_string(), HOST_XTASK_IN_CONTAINER, true).flags(engine.kind));
        }
        cmd = cmd.arg(&image).arg("--probe");
        if with_binary {
            cmd = cmd.args([HOST_XTASK_IN_CONTAINER, "--version"]);
        }
        cmd.output_unchecked()
    };
    let mut reuse_binary = host_binary.is_some();
    let mut checked = probe(reuse_binary)?;
    if reuse_binary && !checked.status.success() && checked.status.code() != Some(UNPRIVILEGED_EXIT) {
        reuse_binary = false;
        checked = probe(false)?;
    }
    if !checked.status.success() {
        let stderr = String::from_utf8_lossy(&checked.stderr);
        if checked.status.code() == Some(UNPRIVILEGED_EXIT) {
            let reason = stderr.lines().find_map(|l| l.split_once(UNPRIVILEGED_MARK).map(|(_, r)| r)).unwrap_or("?");
            bail!(
                "the {program} container is not privileged enough for the build: {reason}. The pipeline \
                 needs a rootful engine that honours --privileged (mounts, device nodes, loop devices); a \
                 rootless engine, a user-namespace-remapped daemon or a policy that drops --privileged cannot run it"
            );
        }
        bail!(
            "`{program} run` of the builder image failed ({}): {}",
            crate::util::run::describe_status(checked.status),
            crate::util::run::tail(stderr.trim(), 10)
        );
    }

    let mut cmd = run_base(&name);
    match (reuse_binary, &host_binary) {
        (true, Some(binary)) => {
            eprintln!("running `cargo xtask {}` in {image} ({program}; this xtask binary)", inner.join(" "));
            cmd = cmd
                .args(Mount::bind(binary.display().to_string(), HOST_XTASK_IN_CONTAINER, true).flags(engine.kind))
                .arg(&image)
                .arg(HOST_XTASK_IN_CONTAINER);
        }
        _ => {
            eprintln!("running `cargo xtask {}` in {image} ({program}; xtask compiled there)", inner.join(" "));
            cmd = cmd.arg(&image).args(["cargo", "run", "--locked", "--package", "xtask", "--"]);
        }
    }
    let cmd = cmd.args(&inner);
    let status = cmd.run_with_lifeline();
    // With --rm the engine removes it; after an engine error it may still be there.
    let _ = Cmd::new(program).args(["rm", "--force"]).arg(&name).output_unchecked();
    let status = status?;
    Ok(status.code().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn an_engines_info_line_decides_whether_it_can_build() {
        let docker = engine_from_info(EngineKind::Docker, r#"x86_64 linux ["name=seccomp,profile=builtin"]"#).unwrap();
        assert!(!docker.emulated);
        let arm = engine_from_info(EngineKind::Docker, r#"aarch64 linux ["name=seccomp"]"#).unwrap();
        assert!(arm.emulated && arm.host_flags.ends_with(&["--platform".to_owned(), "linux/amd64".to_owned()]));
        let windows = engine_from_info(EngineKind::Docker, r#"x86_64 windows []"#).unwrap_err();
        assert!(format!("{windows:#}").contains("Switch to Linux containers"), "{windows:#}");
        let rootless = engine_from_info(EngineKind::Docker, r#"x86_64 linux ["name=rootless"]"#).unwrap_err();
        assert!(format!("{rootless:#}").contains("rootless"));
        assert!(engine_from_info(EngineKind::Podman, "amd64 linux true").is_err(), "rootless podman");
        assert!(!engine_from_info(EngineKind::Podman, "amd64 linux false").unwrap().emulated);
    }

    #[test]
    fn container_switches_are_removed_and_paths_made_absolute() {
        let host = strings(&[
            "--container",
            "--engine",
            "podman",
            "--base=local",
            "iso",
            "--dist",
            "out",
            "--cache-dir",
            "/var/cache/truthdb-os",
            "--compression",
            "zstd",
        ]);
        let (inner, paths) = inner_arguments(&host, Path::new("/home/u/os")).unwrap();
        assert_eq!(inner, strings(&["iso", "--dist", "/home/u/os/out", "--compression", "zstd"]));
        assert_eq!(paths, vec![(PathBuf::from("/home/u/os/out"), PathRole::OutputDir)]);
        let (inner, _) = inner_arguments(&strings(&["--project", "os", "kernel"]), Path::new("/home/u")).unwrap();
        assert_eq!(inner, strings(&["--project", "/home/u/os", "kernel"]));
        let (inner, paths) = inner_arguments(&strings(&["boot-test", "--iso=/tmp/a.iso"]), Path::new("/x")).unwrap();
        assert_eq!(inner, strings(&["boot-test", "--iso", "/tmp/a.iso"]));
        assert_eq!(paths, vec![(PathBuf::from("/tmp/a.iso"), PathRole::InputFile)]);
    }

    #[test]
    fn a_path_option_without_its_value_is_named() {
        let err = inner_arguments(&strings(&["iso", "--dist"]), Path::new("/x")).unwrap_err();
        assert!(err.to_string().contains("--dist needs a value"), "{err}");
    }

    #[test]
    fn podman_volumes_allow_devices_and_setuid() {
        let volume = Mount::Volume { name: CACHE_VOLUME, target: "/var/cache/truthdb-os".into() };
        assert_eq!(volume.flags(EngineKind::Podman), ["--volume", "truthdb-os-cache:/var/cache/truthdb-os:dev,suid"]);
        assert_eq!(volume.flags(EngineKind::Docker), ["--volume", "truthdb-os-cache:/var/cache/truthdb-os"]);
        let scratch = Mount::Scratch { target: "/src/target".into() };
        assert_eq!(
            scratch.flags(EngineKind::Podman),
            ["--mount", "type=volume,destination=/src/target,dev=true,suid=true"]
        );
        assert_eq!(scratch.flags(EngineKind::Docker), ["--mount", "type=volume,destination=/src/target"]);
        assert_eq!(Mount::bind("/src", "/src", true).flags(EngineKind::Podman), ["--volume", "/src:/src:ro"]);
    }

    #[test]
    fn the_container_is_chosen_where_the_pipeline_cannot_run() {
        assert_eq!(
            why_not_native("macos", true, false).unwrap(),
            "this host runs macos, and the pipeline runs on Linux"
        );
        assert!(why_not_native("linux", false, false).unwrap().contains("neither apt nor debootstrap"));
        assert_eq!(why_not_native("linux", true, false), None);
        assert_eq!(why_not_native("linux", false, true), None);
    }

    #[test]
    fn missing_capabilities_are_named_as_docker_names_them() {
        assert_eq!(missing_capabilities("CapBnd:\t000001fffeffffff\n"), ["SYS_RESOURCE"]);
        assert!(missing_capabilities("CapBnd:\t000001ffffffffff\n").is_empty());
        assert!(missing_capabilities("Name: x\n").is_empty());
    }

    #[test]
    fn hard_limits_are_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             96365                96365                processes\n\
                      Max open files            1024                 20000                files\n";
        assert_eq!(hard_limit(limits, "Max open files"), Some(20000));
        assert_eq!(hard_limit(limits, "Max processes"), Some(96365));
        assert_eq!(hard_limit(limits, "Max locked memory"), None);
    }
}
