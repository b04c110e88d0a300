//! xtask: the TruthDB OS build pipeline. `main` only parses and dispatches; each command and
//! each pipeline stage lives in its own module (see ARCHITECTURE.md for the map).

mod boot_test;
mod build_root;
mod checksums;
mod chroot_cache;
mod container;
mod digest;
mod disk;
mod doctor;
mod fetch;
mod fsx;
mod gui_test;
mod install_test;
mod installer_build;
mod iso;
mod kernel;
mod lb_build;
mod lock;
mod manifest;
mod packages;
mod payload_debs;
mod progress;
mod project;
mod publish;
mod qemu;
mod qmp;
mod release;
mod render;
mod run;
mod sandbox;
mod signing;
mod test_suite;
mod vm_cmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use crate::project::Project;

/// Builds, signs and boot-tests the TruthDB OS hybrid ISO.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about, long_about = None)]
struct Cli {
    /// Project directory (default: the workspace this xtask belongs to).
    #[arg(long, global = true, value_name = "DIR")]
    project: Option<PathBuf>,
    /// Label a pre-release build: version `<workspace version>-<SUFFIX>`, e.g. nightly.20261122.
    #[arg(long, global = true, value_name = "SUFFIX")]
    version_suffix: Option<String>,
    /// Fail at once when another run holds the work directory or a cache entry (default: wait).
    #[arg(long, global = true)]
    no_wait: bool,
    #[command(flatten)]
    container: container::ContainerArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the signed, checksummed hybrid ISO into dist/ (needs root; uses sudo if not).
    Iso(iso::IsoArgs),
    /// Build the appliance kernel package from kernel/ (or say it is cached), in the build root.
    Kernel,
    /// Render the live-build configuration only, to read or diff what live-build gets.
    Config {
        /// Output directory (default: target/truthdb-os/config).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check SHA256SUMS/SHA512SUMS and their OpenPGP signatures in a directory.
    Verify {
        /// Directory holding the ISO, the sums and the .sign files.
        #[arg(default_value = "dist")]
        dir: PathBuf,
        /// Public key (armored) to check signatures with; defaults to the development key
        /// published beside development builds.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Boot the ISO in QEMU (BIOS/UEFI x CD/USB) and wait for the boot marker on serial.
    BootTest {
        /// ISO to boot (default: the one `iso` publishes into dist/).
        #[arg(long)]
        iso: Option<PathBuf>,
        /// Boot modes to test (default: all four).
        #[arg(long = "mode", value_enum)]
        modes: Vec<boot_test::BootMode>,
        /// CPU emulation: tcg (default), kvm, or auto (boot the first mode with KVM as the probe:
        /// if its marker does not show within 90 s, TCG for everything; the result is recorded
        /// for `vm`).
        #[arg(long, value_enum, default_value = "tcg")]
        accel: qemu::AccelChoice,
        /// Seconds to wait for the marker in each mode.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 2048)]
        memory: u32,
    },
    /// Install the ISO unattended onto a blank disk in QEMU (UEFI), boot the disk and reach
    /// its database (psql) and SSH from the host; check refusals leave a disk untouched; boot
    /// a `disk` image the same way. Needs root (loop devices for the disk image).
    InstallTest {
        #[command(flatten)]
        vm: InstallVmArgs,
        /// Skip the refusal checks (config without wipe, config naming the boot medium).
        #[arg(long)]
        no_refusals: bool,
        /// Skip building and booting a `disk` image.
        #[arg(long)]
        no_disk_image: bool,
    },
    /// Check the installer says so when a machine has no display (QEMU -vga none), then install
    /// the ISO through the graphical installer in QEMU (UEFI, -vga std): check each
    /// screen's screendump is the installer's picture, drive it with key presses to a finished
    /// install, boot the disk and reach its database and SSH. Screendumps are kept in
    /// target/truthdb-os/gui-test/screens/.
    GuiTest {
        #[command(flatten)]
        vm: InstallVmArgs,
    },
    /// Boot the ISO (default: dist/'s) or a disk image in QEMU to look at: a window, or VNC on
    /// 127.0.0.1 without a desktop; the serial console on this terminal (Ctrl-A X quits); SSH
    /// and PostgreSQL forwarded to free ports on 127.0.0.1, printed before it boots.
    Vm(vm_cmd::VmArgs),
    /// Build a ready-to-boot appliance disk image (raw or qcow2) by running the installer
    /// engine on a loop device (needs root).
    Disk(disk::DiskArgs),
    /// Check a release tag against the workspace version and put the release's files (ISO,
    /// sums, signatures, package manifest, build info, key fingerprint) into a directory.
    Release(release::ReleaseArgs),
    /// Build the builder image (xtask/container/) unless the engine has it, and print its tag
    /// (`--engine`, `--base` choose; CI tags and pushes it to GHCR).
    BuilderImage,
    /// Print the cache keys of the build root and the kernel, as `name=value` lines (for CI
    /// caches keyed like xtask's own).
    CacheKeys,
    /// Check (and with --install, install) the host tools the pipeline needs.
    Doctor {
        /// Install missing tools with apt (as root).
        #[arg(long)]
        install: bool,
    },
    /// Run the whole test suite: unit, golden and other fast tests, then each end-to-end test
    /// on its own (ISO build, verify and release rehearsal, four-way boot, unattended and
    /// graphical install, bad input, incremental rebuild), ending with a table of results and
    /// times. Installs missing host tools first.
    Test {
        /// Only the fast tests (no root, no network, no QEMU).
        #[arg(long)]
        fast: bool,
    },
    /// Internal: PID 1 of the build root's private namespace (see sandbox.rs).
    #[command(hide = true)]
    EnterBuildRoot(sandbox::EnterArgs),
    /// Internal: runs one command in a build root exactly as a pipeline stage does (the
    /// end-to-end tests kill it to prove nothing of the build outlives xtask).
    #[command(hide = true)]
    RunInBuildRoot(sandbox::RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// What the install and GUI tests boot, and for how long.
#[derive(clap::Args)]
struct InstallVmArgs {
    /// ISO to install from (default: the one `iso` publishes into dist/).
    #[arg(long)]
    iso: Option<PathBuf>,
    /// Seconds to wait for each boot, screen or install.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    memory: u32,
}

/// The name of a command that can run in the builder image (`--container`), if it can.
fn container_capable(command: &Command) -> Option<&'static str> {
    Some(match command {
        Command::Iso(_) => "iso",
        Command::Kernel => "kernel",
        Command::Verify { .. } => "verify",
        Command::BootTest { .. } => "boot-test",
        Command::InstallTest { .. } => "install-test",
        Command::GuiTest { .. } => "gui-test",
        Command::Disk(_) => "disk",
        Command::Test { .. } => "test",
        _ => return None,
    })
}

/// Runs the command in the builder image when asked to (`--container`), or when this host
/// cannot run the pipeline itself (with a one-line notice); `None` means run it here.
fn run_in_container_if_wanted(cli: &Cli) -> Result<Option<ExitCode>> {
    let capable = container_capable(&cli.command);
    let auto = match (cli.container.container, capable) {
        (true, None) => bail!(
            "--container: this command runs on the host only (`cargo xtask vm` needs this machine's \
             display and terminal; the others need no build tools)"
        ),
        (true, Some(_)) => None,
        (false, Some(_)) => container::native_unsupported_reason(),
        (false, None) => None,
    };
    if !cli.container.container && auto.is_none() {
        let takes_container_options = matches!(cli.command, Command::BuilderImage);
        if let Some(option) = cli.container.any_option().filter(|_| !takes_container_options) {
            bail!("{option} applies to container builds: add --container");
        }
        return Ok(None);
    }
    if let Some(reason) = auto {
        eprintln!("note: {reason}: running in the builder container (as with --container)");
    }
    let project = Project::load(cli.project.as_deref(), cli.version_suffix.as_deref())?;
    let host_args: Vec<String> = std::env::args().skip(1).collect();
    let code = container::run(&project, &cli.container, &host_args, capable.unwrap_or("xtask"))?;
    Ok(Some(ExitCode::from(u8::try_from(code).unwrap_or(1))))
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    lock::set_no_wait(cli.no_wait);
    if let Some(code) = run_in_container_if_wanted(&cli)? {
        return Ok(code);
    }
    let project = || Project::load(cli.project.as_deref(), cli.version_suffix.as_deref());
    // Commands that write the work directory hold its lock (after any re-run under sudo, which
    // would otherwise wait for its own parent).
    let work_dir_lock = |project: &Project| lock::work_dir(&project.work_dir());
    match cli.command {
        Command::Iso(args) => {
            let project = project()?;
            reexec_as_root_if_needed()?;
            let _lock = work_dir_lock(&project)?;
            iso::run(&project, &args)?;
        }
        Command::Kernel => {
            let project = project()?;
            reexec_as_root_if_needed()?;
            let _lock = work_dir_lock(&project)?;
            iso::run_kernel(&project)?;
        }
        Command::Config { out } => render::run_config_command(&project()?, out)?,
        Command::Verify { dir, key } => publish::run_verify_command(&dir, key.as_deref())?,
        Command::BootTest { iso, modes, accel, timeout, memory } => {
            let project = project()?;
            let _lock = work_dir_lock(&project)?;
            doctor::ensure(&[doctor::Purpose::BootTest])?;
            let config = boot_test::BootTestConfig {
                iso: iso.unwrap_or_else(|| project.default_dist_dir().join(project.iso_file_name())),
                modes: if modes.is_empty() { boot_test::BootMode::ALL.to_vec() } else { modes },
                accel,
                timeout: Duration::from_secs(timeout),
                memory_mib: memory,
                expected_version: project.version.clone(),
                log_dir: project.work_dir().join("boot-test"),
                kvm_probe_cache: project.kvm_probe_file(),
            };
            boot_test::run(&config)?;
        }
        Command::InstallTest { vm, no_refusals, no_disk_image } => {
            let project = project()?;
            reexec_as_root_if_needed()?;
            let _lock = work_dir_lock(&project)?;
            doctor::ensure(&[doctor::Purpose::BootTest, doctor::Purpose::Disk, doctor::Purpose::InstallTest])?;
            let installer = if no_disk_image {
                None
            } else {
                Some(installer_build::build(&installer_build::InstallerBuildInputs::of(&project))?.path)
            };
            let config = install_test::InstallTestConfig {
                iso: vm.iso.unwrap_or_else(|| project.default_dist_dir().join(project.iso_file_name())),
                work_dir: project.work_dir().join("install-test"),
                timeout: Duration::from_secs(vm.timeout),
                memory_mib: vm.memory,
                expected_version: project.version.clone(),
                disk_image_installer: installer,
                negative: !no_refusals,
            };
            install_test::run(&config)?;
        }
        Command::GuiTest { vm } => {
            let project = project()?;
            let _lock = work_dir_lock(&project)?;
            doctor::ensure(&[doctor::Purpose::BootTest, doctor::Purpose::InstallTest])?;
            let config = gui_test::GuiTestConfig {
                iso: vm.iso.unwrap_or_else(|| project.default_dist_dir().join(project.iso_file_name())),
                work_dir: project.work_dir().join("gui-test"),
                timeout: Duration::from_secs(vm.timeout),
                memory_mib: vm.memory,
                expected_version: project.version.clone(),
            };
            gui_test::run(&config)?;
        }
        Command::Vm(args) => {
            let project = project()?;
            doctor::ensure(&[doctor::Purpose::BootTest])?;
            vm_cmd::run(&project, &args)?;
        }
        Command::Disk(args) => {
            let project = project()?;
            disk::check_args(&args)?;
            reexec_as_root_if_needed()?;
            let _lock = work_dir_lock(&project)?;
            disk::run(&project, &args)?;
        }
        Command::Doctor { install } => doctor::run(install)?,
        Command::Release(args) => release::run(&project()?, &args)?,
        Command::BuilderImage => {
            let project = project()?;
            let engine = container::detect_engine(cli.container.engine)?;
            println!("{}", container::builder_image(&project, &engine, &cli.container)?);
        }
        Command::CacheKeys => {
            let (root, kernel) = iso::cache_keys(&project()?)?;
            println!("build-root={root}");
            println!("kernel={kernel}");
        }
        Command::Test { fast } => {
            let project = project()?;
            if !fast {
                reexec_as_root_if_needed()?;
            }
            return test_suite::run(&project, fast);
        }
        Command::EnterBuildRoot(args) => {
            let code = sandbox::enter(args)?;
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        Command::RunInBuildRoot(args) => sandbox::run_in_build_root(args)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// debootstrap, chroot and mounts need root. Without it, re-run this very command under
/// `sudo` when sudo can ask no questions; otherwise say exactly what to run.
fn reexec_as_root_if_needed() -> Result<()> {
    if project::is_root() {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sudo_works = run::Cmd::new("sudo").args(["-n", "true"]).run().is_ok();
    if !sudo_works {
        bail!(
            "this command needs root (debootstrap, chroot, mounts); run:\n  sudo {} {}",
            exe.display(),
            args.join(" ")
        );
    }
    eprintln!("not root: re-running with sudo");
    let status = std::process::Command::new("sudo")
        .arg("--preserve-env=SOURCE_DATE_EPOCH,TRUTHDB_CACHE_DIR,TRUTHDB_SIGNING_KEY,TRUTHDB_SIGNING_KEY_FILE,TRUTHDB_SIGNING_KEY_PASSPHRASE,PATH,CARGO_HOME,RUSTUP_HOME")
        .arg(exe)
        .args(args)
        .status()?;
    std::process::exit(status.code().unwrap_or(1));
}
