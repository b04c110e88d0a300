//! `truthdb-installer`: the command-line front end of the installer engine. In the live
//! system, `truthdb-installer auto` (started by truthdb-installer.service) runs the unattended
//! install when an install config is on the boot medium or named by `truthdb.install=`;
//! `truthdb-installer interactive` (truthdb-installer-serial.service) asks its questions on
//! the serial console instead ([`dialog`]).

mod dialog;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use truthdb_installer::config::{InstallConfig, PowerAction};
use truthdb_installer::install::{self, InstallRequest};
use truthdb_installer::medium::{self, MEDIUM_MOUNT, SQUASHFS_ON_MEDIUM};
use truthdb_installer::plan::Plan;
use truthdb_installer::spec::{IMAGE_SPEC_PATH, ImageSpec};
use truthdb_installer::tool::Log;
use truthdb_installer::{
    block_devices, describe_device, list_disks, list_disks_for, live_medium_device, unattended_guards,
};

/// Installs TruthDB OS to a disk: lists disks, shows the plan (a dry run) and installs.
#[derive(Parser)]
#[command(name = "truthdb-installer", version = truthdb_installer::VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Target {
    /// The unattended install config (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Install to this device instead of the one the config selects (how `cargo xtask disk`
    /// points the engine at a disk image's loop device).
    #[arg(long)]
    disk: Option<String>,
    /// The image spec (default: the running image's /usr/lib/truthdb/image.toml).
    #[arg(long)]
    spec: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// List the disks the appliance can be installed to (never the live medium).
    Disks {
        /// Print every disk as a JSON array instead: its fields (path, by_id, model, serial,
        /// size_bytes, transport, removable, read_only, children), `installable`, and
        /// `why_not` (null when installable).
        #[arg(long)]
        json: bool,
    },
    /// Show what an install with this config would erase and create (dry run).
    Plan(Target),
    /// Install: ERASES the selected disk (the config must say `wipe = true`).
    Install {
        #[command(flatten)]
        target: Target,
        /// The image's root file system (default: the live medium's).
        #[arg(long)]
        source: Option<PathBuf>,
        /// Do not add a UEFI boot entry (disk images; the fallback path boots anyway).
        #[arg(long)]
        no_boot_entry: bool,
        /// Scratch directory for mount points.
        #[arg(long, default_value = "/run/truthdb-installer")]
        work_dir: PathBuf,
        /// The install log (copied to the installed system's /var/log/truthdb-installer.log).
        #[arg(long, default_value = "/var/log/truthdb-installer.log")]
        log: PathBuf,
    },
    /// In the live system: install unattended if a config is on the boot medium or named by
    /// the `truthdb.install=` kernel parameter, then power off or reboot as it says.
    Auto,
    /// Ask the install's questions on this terminal (the serial console installer, the boot
    /// menu's `truthdb.installer=serial` entry), show the plan, and install after the disk's
    /// path is typed; then reboot or power off as answered.
    Interactive,
    /// Exit 0 if FRONT_END is the installer this live boot runs (one per boot: a config on the
    /// medium makes it `unattended`, `truthdb.installer=serial` `serial-console`, else
    /// `graphical`), 1 if not: the services' ExecCondition.
    FrontEnd {
        #[arg(value_enum)]
        front_end: FrontEndArg,
    },
}

/// [`medium::FrontEnd`] on the command line.
#[derive(Clone, Copy, clap::ValueEnum)]
enum FrontEndArg {
    Unattended,
    SerialConsole,
    Graphical,
}

impl From<FrontEndArg> for medium::FrontEnd {
    fn from(arg: FrontEndArg) -> medium::FrontEnd {
        match arg {
            FrontEndArg::Unattended => medium::FrontEnd::Unattended,
            FrontEndArg::SerialConsole => medium::FrontEnd::SerialConsole,
            FrontEndArg::Graphical => medium::FrontEnd::Graphical,
        }
    }
}

/// Exit status: 0 done, 1 failed or refused (the error on stderr), 2 a usage error (clap's,
/// before anything runs).
fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("truthdb-installer: error: {e}");
            ExitCode::from(1)
        }
    }
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn load_config(path: &Path) -> AnyResult<InstallConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading install config {}: {e}", path.display()))?;
    Ok(InstallConfig::parse(&text, &path.display().to_string())?)
}

fn load_spec(path: Option<&Path>) -> AnyResult<ImageSpec> {
    let default = Path::new("/").join(IMAGE_SPEC_PATH);
    Ok(ImageSpec::load(path.unwrap_or(&default))?)
}

/// The disk to install to: the one named on the command line, else the config's selection.
/// A disk the config selects is the live system's (or a person's) target, so the install
/// config's guards apply to it: no install over an existing one without `reinstall = true`,
/// none on a BIOS-booted machine without `allow_bios = true`. A device named on the command
/// line (`--disk`, how `cargo xtask disk` builds an image on a loop device) is not guarded:
/// the image does not boot on the machine that makes it.
fn resolve_disk(
    config: &InstallConfig,
    config_path: &Path,
    override_path: Option<&str>,
    spec: &ImageSpec,
    wait: Wait,
) -> AnyResult<block_devices::Disk> {
    let layout = install::layout_for(spec);
    match override_path {
        Some(path) => Ok(describe_device(path)?),
        None => {
            let selector = config.disk_selector(&config_path.display().to_string())?;
            let medium = live_medium_device();
            let all = match wait {
                Wait::ForTheDisk => list_disks_for(selector)?,
                Wait::No => list_disks()?,
            };
            let disk = block_devices::select(selector, &all, medium.as_deref(), layout.min_disk_bytes())?;
            unattended_guards(config, &disk)?;
            Ok(disk)
        }
    }
}

/// Whether to wait for the disk a config names (the unattended path, started at boot, when a
/// USB or SAN disk may still be appearing) or take the disks as they are (a person at a shell).
#[derive(Clone, Copy)]
enum Wait {
    ForTheDisk,
    No,
}

fn run(cli: Cli) -> AnyResult<()> {
    match cli.command {
        Command::Disks { json } => {
            let spec = load_spec(None).ok();
            let layout = spec.as_ref().map(install::layout_for).unwrap_or_default();
            let medium = live_medium_device();
            let all = list_disks()?;
            if json {
                let listed = block_devices::listing(&all, medium.as_deref(), layout.min_disk_bytes());
                println!("{}", serde_json::to_string_pretty(&listed)?);
                return Ok(());
            }
            let offered = block_devices::installable(&all, medium.as_deref(), layout.min_disk_bytes());
            if offered.is_empty() {
                println!("no suitable disk (at least {} needed)", block_devices::human_size(layout.min_disk_bytes()));
            }
            for disk in offered {
                println!("{}", disk.describe());
            }
        }
        Command::Plan(target) => {
            let config = load_config(&target.config)?;
            let spec = load_spec(target.spec.as_deref())?;
            let disk = resolve_disk(&config, &target.config, target.disk.as_deref(), &spec, Wait::No)?;
            print!("{}", Plan::new(&disk, &install::layout_for(&spec)));
            println!("(dry run: nothing was written)");
        }
        Command::Install { target, source, no_boot_entry, work_dir, log } => {
            let config = load_config(&target.config)?;
            let spec = load_spec(target.spec.as_deref())?;
            let disk = resolve_disk(&config, &target.config, target.disk.as_deref(), &spec, Wait::No)?;
            let source = source.unwrap_or_else(|| Path::new(MEDIUM_MOUNT).join(SQUASHFS_ON_MEDIUM));
            let request = InstallRequest {
                config,
                disk,
                source,
                spec,
                work_dir,
                efi_boot_entry: !no_boot_entry,
                boot_medium: live_medium_device(),
            };
            install_and_report(&request, &log)?;
        }
        Command::Auto => auto()?,
        Command::Interactive => interactive()?,
        Command::FrontEnd { front_end } => {
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            let (chosen, front_end) = (medium::front_end(&cmdline, Path::new(MEDIUM_MOUNT)), front_end.into());
            if chosen != front_end {
                return Err(format!("this boot's installer is the {chosen:?} one, not {front_end:?}").into());
            }
        }
    }
    Ok(())
}

fn install_and_report(request: &InstallRequest, log_path: &Path) -> AnyResult<()> {
    let log = Log::create(log_path)?;
    println!(
        "truthdb-installer {}: {}",
        truthdb_installer::VERSION,
        Plan::new(&request.disk, &install::layout_for(&request.spec))
    );
    let report = install::install(request, &log, &mut |event| println!("truthdb-installer: {event}")).map_err(|e| {
        log.line(&format!("INSTALL FAILED: {e}"));
        println!("truthdb-installer: the install log is {}", log_path.display());
        e
    })?;
    println!("truthdb-installer: copy verified: {}", report.copied);
    println!("truthdb-installer: installed footprint: {} MiB in use", report.footprint_bytes >> 20);
    if let Some(entry) = &report.boot_entry {
        println!("truthdb-installer: UEFI boot entry: {entry}");
    }
    println!(
        "TRUTHDB-INSTALL-DONE disk={} kernel={} version={}",
        request.disk.path, report.kernel_release, request.spec.version
    );
    Ok(())
}

/// The serial console installer: questions, plan, the typed consent, then the install and the
/// power action answered. Quitting writes nothing.
fn interactive() -> AnyResult<()> {
    let _ = std::process::Command::new("udevadm").args(["settle", "--timeout=30"]).status();
    let spec = load_spec(None)?;
    let layout = install::layout_for(&spec);
    let medium = live_medium_device();
    let all = list_disks()?;
    let not_offered: Vec<(block_devices::Disk, String)> =
        block_devices::listing(&all, medium.as_deref(), layout.min_disk_bytes())
            .into_iter()
            .filter_map(|listed| listed.why_not.map(|why| (listed.disk.clone(), why)))
            .collect();
    let offered = block_devices::installable(&all, medium.as_deref(), layout.min_disk_bytes());
    let hash = |password: &str| truthdb_installer::config::password_hash(password);
    let (disk, config) =
        match dialog::ask(&mut dialog::Console, &offered, &not_offered, &layout, spec.payload.tds_port, &hash) {
            dialog::Decision::Install { disk, config } => (*disk, *config),
            dialog::Decision::Quit => return Ok(()),
        };
    let power = config.power;
    let request = InstallRequest::from_live_medium(config, disk, spec);
    install_and_report(&request, Path::new("/var/log/truthdb-installer.log"))?;
    power_off_or_reboot(power)
}

/// After an install: what the config (or the person) asked for.
fn power_off_or_reboot(power: PowerAction) -> AnyResult<()> {
    let verb = match power {
        PowerAction::Poweroff => "poweroff",
        PowerAction::Reboot => "reboot",
    };
    println!("truthdb-installer: install complete; {verb}");
    std::process::Command::new("systemctl").arg(verb).status()?;
    Ok(())
}

/// The live system's unattended path. Refusals are printed on the console (the service's
/// output goes there) and leave the disks untouched.
fn auto() -> AnyResult<()> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let result = (|| -> AnyResult<Option<PowerAction>> {
        let Some(config_path) = medium::unattended_config(&cmdline, Path::new(MEDIUM_MOUNT))? else {
            println!(
                "truthdb-installer: no unattended install config ({} on the boot medium, or {}=<path>)",
                medium::CONFIG_ON_MEDIUM,
                medium::KERNEL_PARAMETER
            );
            return Ok(None);
        };
        println!("truthdb-installer: unattended install with {}", config_path.display());
        // Let udev finish naming disks (/dev/disk/by-id) before selecting one; a disk the
        // config names is then waited for a while longer (see `list_disks_for`).
        let _ = std::process::Command::new("udevadm").args(["settle", "--timeout=30"]).status();
        let config = load_config(&config_path)?;
        let power = config.power;
        let spec = load_spec(None)?;
        let disk = resolve_disk(&config, &config_path, None, &spec, Wait::ForTheDisk)?;
        let request = InstallRequest::from_live_medium(config, disk, spec);
        install_and_report(&request, Path::new("/var/log/truthdb-installer.log"))?;
        Ok(Some(power))
    })();
    match result {
        Ok(None) => Ok(()),
        Ok(Some(power)) => power_off_or_reboot(power),
        Err(e) => {
            // Config and disk-selection errors come before anything is written (in the
            // install, only its check step refuses).
            let refused = matches!(
                e.downcast_ref::<truthdb_installer::Error>().map(truthdb_installer::Error::without_step),
                Some(
                    truthdb_installer::Error::Config { .. }
                        | truthdb_installer::Error::NoDisk { .. }
                        | truthdb_installer::Error::AmbiguousDisk { .. }
                        | truthdb_installer::Error::Refused { .. }
                )
            );
            if refused {
                println!("TRUTHDB-INSTALL-REFUSED: {e}");
                println!("truthdb-installer: nothing was written to any disk");
            } else {
                println!("TRUTHDB-INSTALL-FAILED: {e}");
            }
            Err(e)
        }
    }
}
