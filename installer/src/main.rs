//! `truthdb-installer`: the command-line front end of the installer engine.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use truthdb_installer::config::InstallConfig;
use truthdb_installer::plan::{Layout, Plan};
use truthdb_installer::{disks, list_disks, live_medium_device};

/// Installs TruthDB OS to a disk. So far it lists disks and shows the plan (a dry run); it
/// writes nothing.
#[derive(Parser)]
#[command(name = "truthdb-installer", version = truthdb_installer::VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the disks the appliance can be installed to (never the live medium).
    Disks,
    /// Show what an install with this config would erase and create (dry run).
    Plan {
        /// The unattended install config (TOML).
        #[arg(long)]
        config: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let layout = Layout::default();
    let medium = live_medium_device();
    match cli.command {
        Command::Disks => {
            let all = list_disks()?;
            let offered = disks::installable(&all, medium.as_deref(), layout.min_disk_bytes());
            if offered.is_empty() {
                println!("no suitable disk (at least {} needed)", disks::human_size(layout.min_disk_bytes()));
            }
            for disk in offered {
                println!("{}", disk.describe());
            }
        }
        Command::Plan { config } => {
            let text = std::fs::read_to_string(&config).map_err(|e| format!("reading {}: {e}", config.display()))?;
            let config = InstallConfig::parse(&text, &config.display().to_string())?;
            let disk = disks::select(&config.disk, &list_disks()?, medium.as_deref(), layout.min_disk_bytes())?;
            print!("{}", Plan::new(&disk, &layout));
            println!("(dry run: nothing was written)");
        }
    }
    Ok(())
}
