//! xtask: the TruthDB OS build pipeline. `main` only parses and dispatches: each command's
//! arguments are a type with its own `run`, in the module that does the work (see
//! ARCHITECTURE.md for the map: `stages/` builds the ISO, `vm/` boots it, `util/` is shared).

mod bench;
mod container;
mod disk_image;
mod doctor;
mod iso;
mod project;
mod release;
mod repro;
mod stages;
mod test_suite;
mod util;
mod vm;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::project::ProjectArgs;

/// Builds, signs and boot-tests the TruthDB OS hybrid ISO.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    project: ProjectArgs,
    #[command(flatten)]
    output: util::progress::OutputArgs,
    #[command(flatten)]
    container: container::ContainerArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the signed, checksummed hybrid ISO into dist/ (needs root; uses sudo if not).
    Iso(iso::IsoArgs),
    /// Record the package lock (lb-config/packages.lock): build the image from the archive as
    /// it is now in a fresh chroot, every download through the pipeline's apt proxy, and write
    /// down each file it fetched (signed indexes and .debs) by URL and sha256; the files go into
    /// the package store. `iso` then builds from the lock. `--check`: is the lock still fresh?
    Lock(iso::LockArgs),
    /// Build the appliance kernel package from kernel/ (or say it is cached), in the build root.
    Kernel(iso::KernelArgs),
    /// Render the live-build configuration only, to read or diff what live-build gets.
    Config(stages::render::ConfigArgs),
    /// Check SHA256SUMS/SHA512SUMS and their OpenPGP signatures in a directory.
    Verify(stages::publish::VerifyArgs),
    /// Boot the ISO in QEMU (BIOS/UEFI x CD/USB) and wait for the boot marker on serial.
    BootTest(vm::boot_test::BootTestArgs),
    /// Install the ISO unattended onto a blank disk in QEMU (UEFI), boot the disk and reach
    /// its database (psql) and SSH from the host; check refusals leave a disk untouched; answer
    /// the serial console installer's questions on the serial port (a wrong disk path and `q`
    /// write nothing); boot a `disk` image the same way. Needs root (loop devices for the disk
    /// image).
    InstallTest(vm::install_test::InstallTestArgs),
    /// Check the installer says so when a machine has no display (QEMU -vga none), then install
    /// the ISO through the graphical installer in QEMU (UEFI, -vga std): check each
    /// screen's screendump is the installer's picture, drive it with key presses to a finished
    /// install, boot the disk and reach its database and SSH. Screendumps are kept in
    /// target/truthdb-os/gui-test/screens/.
    GuiTest(vm::gui_test::GuiTestArgs),
    /// Boot the ISO the four ways (BIOS/UEFI x CD/USB), each on a QEMU machine carrying some of
    /// the emulated network cards (e1000, e1000e, igb, rtl8139, vmxnet3, virtio), storage
    /// controllers (NVMe, AHCI, MegaRAID, virtio-scsi, LSI 53C895A, PVSCSI) and displays
    /// (virtio, QXL, Cirrus, ramfb), and check from the serial console the boot marker, that
    /// each device was bound to its driver and that the installer drew on its display.
    HardwareTest(vm::hardware_test::HardwareTestArgs),
    /// Build a generic qcow2 (`disk` without --config) from the ISO and boot it as two VMs with
    /// their own cloud-init NoCloud seeds on larger disks (each provisioned, healthy, reached
    /// with its own key and password, unlike the other), once with systemd credentials (SMBIOS
    /// type 11, fw_cfg), once with nothing (no login, told how to provision), and the first
    /// again (provisioned once). `--image` boots a published one instead.
    FirstBootTest(vm::first_boot_test::FirstBootTestArgs),
    /// Boot the ISO (default: dist/'s) or a disk image in QEMU to look at: a window, or VNC on
    /// 127.0.0.1 without a desktop; the serial console on this terminal (Ctrl-A X quits); SSH
    /// and PostgreSQL forwarded to free ports on 127.0.0.1, printed before it boots.
    Vm(vm::look::VmArgs),
    /// Measure the ISO's live boot against a yardstick: a minimal Debian live image live-build
    /// makes from the same options and kernel (built once, cached), both booted side by side
    /// to their boot marker; prints each round and the ratio.
    Bench(bench::BenchArgs),
    /// Build a ready-to-boot appliance disk image (raw or qcow2) by running the installer
    /// engine on a loop device (needs root): generic (provisioned on first boot by cloud-init or
    /// systemd credentials)
    /// without --config, or pre-provisioned for one machine with it.
    Disk(disk_image::DiskArgs),
    /// Build the image again from a clean clone of the same commit, in its own work directory
    /// and cache (the cached kernel package reused unless --with-kernel), and compare the
    /// published files byte for byte; diffoscope shows where they differ.
    ReproCheck(repro::ReproCheckArgs),
    /// Check a release tag against the workspace version and put the release's files (ISO,
    /// sums, signatures, package manifest, build info, key fingerprint) into a directory.
    Release(release::ReleaseArgs),
    /// Build the builder image (xtask/container/) unless the engine has it, and print its tag
    /// (`--engine`, `--base` choose; CI tags and pushes it to GHCR).
    BuilderImage(container::BuilderImageArgs),
    /// Print the cache keys of the build root and the kernel, as `name=value` lines (for CI
    /// caches keyed like xtask's own).
    CacheKeys(iso::CacheKeysArgs),
    /// Check (and with --install, install) the host tools the pipeline needs.
    Doctor(doctor::DoctorArgs),
    /// Run the whole test suite: unit, golden and other fast tests; the workflows' steps as a
    /// runner's user; then each end-to-end test on its own (ISO build, verify and release
    /// rehearsal, four-way boot, unattended and graphical install, bad input, incremental
    /// rebuild, container build, extra apt repositories), ending with a table of results and
    /// times. Installs missing host tools first.
    Test(test_suite::TestArgs),
    /// Internal: PID 1 of the build root's private namespace (see stages/sandbox.rs).
    #[command(hide = true)]
    EnterBuildRoot(stages::sandbox::EnterArgs),
    /// Internal: runs one command in a build root exactly as a pipeline stage does (the
    /// end-to-end tests kill it to prove nothing of the build outlives xtask).
    #[command(hide = true)]
    RunInBuildRoot(stages::sandbox::RunArgs),
}

impl Command {
    /// The name of a command that can run in the builder image (`--container`), if it can.
    fn container_capable(&self) -> Option<&'static str> {
        Some(match self {
            Command::Iso(_) => "iso",
            Command::Kernel(_) => "kernel",
            Command::Verify(_) => "verify",
            Command::BootTest(_) => "boot-test",
            Command::InstallTest(_) => "install-test",
            Command::GuiTest(_) => "gui-test",
            Command::HardwareTest(_) => "hardware-test",
            Command::FirstBootTest(_) => "first-boot-test",
            Command::Bench(_) => "bench",
            Command::Disk(_) => "disk",
            Command::ReproCheck(_) => "repro-check",
            Command::Test(_) => "test",
            _ => return None,
        })
    }
}

/// Exit codes: 0 success, 1 a failure, 2 a usage error (clap's own, or a [`util::UsageError`]).
fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.output.apply();
    match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("{}: {err:#}", util::progress::red("error"));
            if err.downcast_ref::<util::UsageError>().is_some() { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    util::lock::set_no_wait(cli.project.no_wait);
    let builder_image = matches!(cli.command, Command::BuilderImage(_));
    if let Some(code) =
        container::run_if_wanted(&cli.container, &cli.project, cli.command.container_capable(), builder_image)?
    {
        return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
    }
    let project = || cli.project.load();
    match cli.command {
        Command::Iso(args) => args.run(&project()?)?,
        Command::Lock(args) => args.run(&project()?)?,
        Command::Kernel(args) => args.run(&project()?)?,
        Command::Config(args) => args.run(&project()?)?,
        Command::Verify(args) => args.run()?,
        Command::BootTest(args) => args.run(&project()?)?,
        Command::InstallTest(args) => args.run(&project()?)?,
        Command::GuiTest(args) => args.run(&project()?)?,
        Command::HardwareTest(args) => args.run(&project()?)?,
        Command::FirstBootTest(args) => args.run(&project()?)?,
        Command::Vm(args) => args.run(&project()?)?,
        Command::Bench(args) => args.run(&project()?)?,
        Command::Disk(args) => args.run(&project()?)?,
        Command::Release(args) => args.run(&project()?)?,
        Command::ReproCheck(args) => args.run(&project()?)?,
        Command::BuilderImage(args) => args.run(&project()?, &cli.container)?,
        Command::CacheKeys(args) => args.run(&project()?)?,
        Command::Doctor(args) => args.run()?,
        Command::Test(args) => return args.run(&project()?),
        Command::EnterBuildRoot(args) => {
            let code = stages::sandbox::enter(args)?;
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        Command::RunInBuildRoot(args) => stages::sandbox::run_in_build_root(args)?,
    }
    Ok(ExitCode::SUCCESS)
}
