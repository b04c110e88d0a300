//! `truthdb-installer`: the command-line front end of the installer engine.

use clap::Parser;

/// Installs TruthDB OS to a disk. (The install engine is not written yet; this binary only
/// reports its version.)
#[derive(Parser)]
#[command(name = "truthdb-installer", version = truthdb_installer::VERSION, about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!("truthdb-installer {}: the install engine is not implemented yet", truthdb_installer::VERSION);
    std::process::exit(2);
}
