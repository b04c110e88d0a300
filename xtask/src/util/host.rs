//! Facts about the machine xtask runs on that decide how it runs: whether it is root, and how
//! it becomes root for the commands that need it (sudo, re-running this very binary).

use anyhow::{Result, bail};

use crate::util::run;

/// Whether this process runs as root (debootstrap, chroot and mounts need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[cfg(unix)]
    return unsafe { libc::geteuid() } == 0;
    // Windows has no root: there xtask only starts the builder container.
    #[cfg(not(unix))]
    return false;
}

/// debootstrap, chroot and mounts need root. Without it, re-run this very command under
/// `sudo` when sudo can ask no questions; otherwise say exactly what to run.
pub fn reexec_as_root_if_needed() -> Result<()> {
    if is_root() {
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
        .arg("--preserve-env=SOURCE_DATE_EPOCH,TRUTHDB_CACHE_DIR,TRUTHDB_SIGNING_KEY,TRUTHDB_SIGNING_KEY_FILE,TRUTHDB_SIGNING_KEY_PASSPHRASE,PATH,CARGO,CARGO_HOME,RUSTUP_HOME")
        .arg(exe)
        .args(args)
        .status()?;
    std::process::exit(status.code().unwrap_or(1));
}
