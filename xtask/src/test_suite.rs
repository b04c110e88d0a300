//! `cargo xtask test`: the whole suite in one command, as the README and CI run it.
//!
//! 1. host tools (installed as root when missing);
//! 2. `cargo test --workspace`: unit, golden and bad-input tests;
//! 3. the end-to-end tests in `xtask/tests/e2e.rs` (`#[ignore]`d in a plain `cargo test`
//!    because they need root, the Debian mirror and ~15 minutes): build the ISO for real,
//!    verify it, boot it four ways, and feed the pipeline an unknown package.

use std::process::ExitCode;

use anyhow::Result;

use crate::doctor::{self, Purpose};
use crate::project::Project;
use crate::run::Cmd;

pub fn run(project: &Project, fast: bool) -> Result<ExitCode> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let cargo = || Cmd::new(&cargo).dir(&project.root);
    if !fast {
        doctor::ensure(&[Purpose::Build, Purpose::BootTest])?;
    }
    eprintln!("==> unit and golden tests");
    cargo().args(["test", "--workspace", "--locked"]).run_inherit()?;
    if fast {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("==> end-to-end tests (ISO build, verify, four-way boot, bad input)");
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
