//! Running a command inside a build root, in a private mount and PID namespace.
//!
//! `unshare --mount --pid --fork --kill-child` starts this same xtask binary (hidden subcommand
//! `enter-build-root`) as PID 1 of a new PID namespace with a private copy of the mount table.
//! It mounts proc, sys, dev and the requested bind mounts under the root, chroots and runs the
//! command. Every mount exists only in that namespace, and when its PID 1 exits (normally,
//! by error, by Ctrl-C or by SIGKILL: `--kill-child` covers the death of `unshare` itself) the
//! kernel kills every process in it and drops the namespace with its mounts. So a failed,
//! interrupted or killed build cannot leave a mount behind on the host.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::run::{Cmd, describe_status};

/// The PATH inside a Debian build root.
pub const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A command to run inside a build root.
#[derive(Clone, Debug)]
pub struct RootCommand {
    root: PathBuf,
    binds: Vec<(PathBuf, PathBuf)>,
    workdir: PathBuf,
    env: Vec<(String, String)>,
    argv: Vec<String>,
}

impl RootCommand {
    pub fn new(root: &Path, argv: &[&str]) -> RootCommand {
        RootCommand {
            root: root.to_owned(),
            binds: Vec::new(),
            workdir: "/".into(),
            env: Vec::new(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Makes the host directory `host` visible at `inside` (an absolute path in the root).
    pub fn bind(mut self, host: &Path, inside: &str) -> RootCommand {
        self.binds.push((host.to_owned(), inside.into()));
        self
    }

    pub fn workdir(mut self, inside: &str) -> RootCommand {
        self.workdir = inside.into();
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> RootCommand {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// The host command line that runs this in a fresh namespace.
    pub fn to_cmd(&self) -> Result<Cmd> {
        let exe = std::env::current_exe().context("locating the xtask binary to re-run it in the namespace")?;
        let mut cmd = Cmd::new("unshare")
            .args(["--mount", "--pid", "--fork", "--kill-child", "--propagation", "private", "--"])
            .arg(exe)
            .arg("enter-build-root")
            .arg("--root")
            .arg(&self.root)
            .arg("--workdir")
            .arg(&self.workdir);
        for (host, inside) in &self.binds {
            cmd = cmd.arg("--bind").arg(format!("{}:{}", host.display(), inside.display()));
        }
        for (key, value) in &self.env {
            cmd = cmd.arg("--env").arg(format!("{key}={value}"));
        }
        // `--kill-child` ends the namespace when unshare dies; this ends unshare when xtask
        // dies (SIGKILL included), so a killed xtask leaves no build running.
        Ok(cmd.arg("--").args(&self.argv).die_with_parent())
    }
}

/// Arguments of the hidden `run-in-build-root` subcommand.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[arg(long)]
    root: PathBuf,
    #[arg(long, default_value = "/")]
    workdir: String,
    /// HOST:INSIDE
    #[arg(long = "bind")]
    binds: Vec<String>,
    #[arg(last = true, required = true)]
    argv: Vec<String>,
}

/// Runs a command in a build root the way the stages do (through [`RootCommand`]).
pub fn run_in_build_root(args: RunArgs) -> Result<()> {
    let argv: Vec<&str> = args.argv.iter().map(String::as_str).collect();
    let mut command = RootCommand::new(&args.root, &argv).workdir(&args.workdir);
    for bind in &args.binds {
        let (host, inside) = bind.split_once(':').with_context(|| format!("--bind {bind:?} is not HOST:INSIDE"))?;
        command = command.bind(Path::new(host), inside);
    }
    command.to_cmd()?.run_inherit()
}

/// Arguments of the hidden `enter-build-root` subcommand (PID 1 of the namespace).
#[derive(Debug, clap::Args)]
pub struct EnterArgs {
    #[arg(long)]
    root: PathBuf,
    #[arg(long)]
    workdir: PathBuf,
    /// HOST:INSIDE
    #[arg(long = "bind")]
    binds: Vec<String>,
    /// KEY=VALUE
    #[arg(long = "env")]
    env: Vec<String>,
    #[arg(last = true, required = true)]
    argv: Vec<String>,
}

/// Runs inside the new namespace: mounts, chroot, runs the command, exits with its status.
// Off Unix the chroot below is a refusal, and what follows it unreachable: xtask compiles there
// only to start the builder container.
#[cfg_attr(not(unix), allow(unreachable_code))]
pub fn enter(args: EnterArgs) -> Result<i32> {
    if std::process::id() != 1 {
        bail!("enter-build-root is internal: run through `unshare --mount --pid --fork` (as PID 1)");
    }
    let root = &args.root;
    mount(&["-t", "proc", "proc"], &root.join("proc"))?;
    mount(&["-t", "sysfs", "sysfs"], &root.join("sys"))?;
    mount(&["--rbind", "/dev"], &root.join("dev"))?;
    for bind in &args.binds {
        let (host, inside) = bind.split_once(':').with_context(|| format!("--bind {bind:?} is not HOST:INSIDE"))?;
        let target = root.join(inside.trim_start_matches('/'));
        std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
        mount(&["--bind", host], &target)?;
    }
    // Name resolution for apt and debootstrap inside the root: the host's resolver.
    let resolv = root.join("etc/resolv.conf");
    let _ = std::fs::remove_file(&resolv);
    std::fs::copy("/etc/resolv.conf", &resolv).context("copying /etc/resolv.conf into the build root")?;

    #[cfg(unix)]
    std::os::unix::fs::chroot(root).with_context(|| format!("chroot {}", root.display()))?;
    #[cfg(not(unix))]
    bail!("entering the build root {} needs Linux", root.display());
    std::env::set_current_dir(&args.workdir)
        .with_context(|| format!("cd {} in the build root", args.workdir.display()))?;

    let mut command = Command::new(&args.argv[0]);
    command.args(&args.argv[1..]).env_clear().env("PATH", ROOT_PATH).env("HOME", "/root");
    command.env("LC_ALL", "C.UTF-8").env("DEBIAN_FRONTEND", "noninteractive");
    for pair in &args.env {
        let (key, value) = pair.split_once('=').with_context(|| format!("--env {pair:?} is not KEY=VALUE"))?;
        command.env(key, value);
    }
    // Spawn rather than exec: as PID 1 we reap orphans, and when we return the kernel tears
    // down the namespace and everything still running in it.
    let status = command.status().with_context(|| format!("running {:?} in the build root", args.argv[0]))?;
    if !status.success() {
        eprintln!("{} in the build root: {}", args.argv[0], describe_status(status));
    }
    Ok(status.code().unwrap_or(128 + 9))
}

fn mount(source: &[&str], target: &Path) -> Result<()> {
    Cmd::new("mount").args(source).arg(target).run().with_context(|| format!("mounting onto {}", target.display()))
}
