//! The GitHub workflows, really run: every job's `run:` steps, in order, on this machine, as a
//! runner runs them: a non-root user (`truthdb-ci`) with password-less sudo under Ubuntu's
//! sudoers defaults (`env_reset`, `secure_path`), its Rust toolchain in `~/.cargo/bin`, a fresh
//! clone as `$GITHUB_WORKSPACE`, the `GITHUB_*` variables a runner sets, and GitHub's default
//! shell (`bash --noprofile --norc -eo pipefail {0}`). Each job stops before its heavy build
//! (the boundary is named per job in [`PLAN`]); `uses:` steps are GitHub actions, not run here,
//! and are skipped with a line saying so (the toolchain action too: the jobs here use the
//! toolchain copied from root's rustup, whatever the workspace's rust-version says).
//!
//! Needs root (it creates the user, installs sudo, writes a sudoers drop-in), so it is
//! `#[ignore]`d in a plain `cargo test`. Run it with
//! `cargo test -p xtask --test workflow_runs -- --ignored --nocapture`.
//!
//! Everything lives under [`SANDBOX`] and persists between runs, as a runner's caches would:
//! the user's home (toolchain, cargo registry) and one cargo `target/` that jobs caching
//! `target` get moved into their workspace (and back after them). The clone's files get the
//! modification times of this tree's files, so cargo recompiles what changed here, not
//! everything (on GitHub a fresh checkout recompiles the workspace crates every time).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use yaml_rust2::{Yaml, YamlLoader};

mod common;
use common::repo_root;

/// The runner user.
const USER: &str = "truthdb-ci";
/// Its home, its workspaces, the origin repository and the fake `/var/cache`.
const SANDBOX: &str = "/var/cache/truthdb-os/workflow-runner";
/// Ubuntu's (GitHub's runner images') sudoers defaults; Debian's differ only by `/snap/bin`.
const SECURE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/snap/bin";
const OWNER: &str = "truthdb";
const REPOSITORY: &str = "truthdb/truthdb-os";

/// What is run of each job.
enum Part {
    /// Every step.
    All,
    /// The steps before the first whose `run:` contains this text: the heavy build.
    Before(&'static str),
    /// Nothing, for this reason.
    Skip(&'static str),
}

/// Every job of every workflow, and where it stops. A job missing here fails the test.
const PLAN: &[(&str, &str, Part)] = &[
    ("ci.yml", "lint", Part::All),
    ("ci.yml", "macos-host", Part::Skip("runs on macos-14; this host is Linux")),
    ("ci.yml", "windows-host", Part::Skip("runs on windows-2022; this host is Linux")),
    ("ci.yml", "e2e", Part::Before(".ci/run")),
    ("nightly.yml", "nightly", Part::Before(".ci/run")),
    ("nightly.yml", "reproducible", Part::Before("repro-check")),
    ("release.yml", "build", Part::Before(".ci/run")),
    (
        "release.yml",
        "publish",
        Part::Skip("downloads the build job's artifact and talks to GitHub's API with the job's token"),
    ),
    ("builder-image.yml", "publish", Part::Before("builder-image")),
    (
        "container-build.yml",
        "iso",
        Part::Skip("a container job: its steps run as root in the builder image on a self-hosted runner"),
    ),
];

/// What a step before a job's boundary must never run (a boundary that moved or vanished).
const HEAVY: &[&str] =
    &[".ci/run", "xtask iso", "repro-check", "xtask kernel", "boot-test", "install-test", "builder-image"];

/// The event each workflow is run for: (GITHUB_EVENT_NAME, GITHUB_REF).
fn event_of(workflow: &str, version: &str) -> (&'static str, String) {
    match workflow {
        "nightly.yml" => ("schedule", "refs/heads/main".into()),
        "release.yml" => ("push", format!("refs/tags/v{version}")),
        _ => ("push", "refs/heads/main".into()),
    }
}

fn sandbox() -> PathBuf {
    PathBuf::from(SANDBOX)
}

fn home() -> PathBuf {
    sandbox().join("home")
}

fn run_root(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh(script: &str) -> String {
    run_root(Command::new("bash").args(["-euo", "pipefail", "-c", script]))
}

struct Ids {
    uid: u32,
    gid: u32,
}

/// The user, sudo and its sudoers drop-in (idempotent).
fn ensure_runner_user() -> Ids {
    if Command::new("sh").args(["-c", "command -v sudo"]).output().unwrap().stdout.is_empty() {
        sh("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends sudo");
    }
    fs::create_dir_all(sandbox()).unwrap();
    if !Command::new("id").arg(USER).output().unwrap().status.success() {
        run_root(
            Command::new("useradd").args(["--create-home", "--shell", "/bin/bash", "--home-dir"]).arg(home()).arg(USER),
        );
    }
    let sudoers = format!(
        "# A GitHub runner's sudo (xtask/tests/workflow_runs.rs): Ubuntu's defaults.\n\
         Defaults:{USER} env_reset\n\
         Defaults:{USER} secure_path=\"{SECURE_PATH}\"\n\
         {USER} ALL=(ALL) NOPASSWD: ALL\n"
    );
    let tmp = sandbox().join("sudoers.tmp");
    fs::write(&tmp, sudoers).unwrap();
    run_root(Command::new("visudo").arg("-cqf").arg(&tmp));
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o440)).unwrap();
    fs::rename(&tmp, format!("/etc/sudoers.d/{USER}")).unwrap();
    let id = |flag: &str| run_root(Command::new("id").args([flag, USER])).trim().parse().unwrap();
    Ids { uid: id("-u"), gid: id("-g") }
}

/// Root's rustup home and cargo home (where this test's cargo came from).
fn root_toolchain_homes() -> (PathBuf, PathBuf) {
    let from_env = |key: &str, default: &str| {
        std::env::var_os(key).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root").join(default))
    };
    (from_env("RUSTUP_HOME", ".rustup"), from_env("CARGO_HOME", ".cargo"))
}

/// A toolchain in the user's `~/.rustup` and rustup's proxies in `~/.cargo/bin`, as runner
/// images have: a copy of root's default toolchain, made once (rustup cannot download here).
fn ensure_user_toolchain() {
    let (rustup_home, cargo_home) = root_toolchain_homes();
    let settings = fs::read_to_string(rustup_home.join("settings.toml")).unwrap();
    let name = settings
        .lines()
        .find_map(|l| l.strip_prefix("default_toolchain = ").map(|v| v.trim_matches('"').to_owned()))
        .expect("root's rustup has no default toolchain");
    let user_rustup = home().join(".rustup");
    let done = user_rustup.join(format!("copied-{name}"));
    if done.exists() {
        return;
    }
    eprintln!("==> copying root's toolchain {name} into {} (once)", user_rustup.display());
    let source = fs::canonicalize(rustup_home.join("toolchains").join(&name)).unwrap();
    let toolchains = user_rustup.join("toolchains");
    fs::create_dir_all(&toolchains).unwrap();
    let _ = fs::remove_dir_all(toolchains.join(&name));
    run_root(Command::new("cp").arg("-a").arg(&source).arg(toolchains.join(&name)));
    fs::write(
        user_rustup.join("settings.toml"),
        format!("version = \"12\"\ndefault_toolchain = \"{name}\"\nprofile = \"minimal\"\n"),
    )
    .unwrap();
    let bin = home().join(".cargo/bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy(cargo_home.join("bin/rustup"), bin.join("rustup")).unwrap();
    for proxy in ["cargo", "cargo-clippy", "cargo-fmt", "clippy-driver", "rustc", "rustdoc", "rustfmt"] {
        let _ = fs::remove_file(bin.join(proxy));
        std::os::unix::fs::symlink("rustup", bin.join(proxy)).unwrap();
    }
    run_root(Command::new("chown").args(["-R", &format!("{USER}:"), ".rustup", ".cargo"]).current_dir(home()));
    fs::write(&done, "").unwrap();
}

/// This tree as a commit (tracked and untracked files, what is not ignored), pushed to a bare
/// origin as `main` and as the release tag: what a push to main, or of a tag on main, gives.
fn publish_origin(version: &str, ids: &Ids) -> (PathBuf, String) {
    let root = repo_root();
    let index = tempfile::NamedTempFile::new().unwrap();
    let git = || {
        let mut cmd = Command::new("git");
        cmd.current_dir(&root).env("GIT_INDEX_FILE", index.path());
        cmd
    };
    run_root(git().args(["read-tree", "HEAD"]));
    run_root(git().args(["add", "-A"]));
    let tree = run_root(git().arg("write-tree")).trim().to_owned();
    let commit = run_root(
        git()
            .args(["commit-tree", &tree, "-p", "HEAD", "-m", "workflow_runs: this tree"])
            .env("GIT_AUTHOR_NAME", "workflow runs")
            .env("GIT_AUTHOR_EMAIL", "ci@truthdb.invalid")
            .env("GIT_COMMITTER_NAME", "workflow runs")
            .env("GIT_COMMITTER_EMAIL", "ci@truthdb.invalid"),
    )
    .trim()
    .to_owned();
    let origin = sandbox().join("origin.git");
    let _ = fs::remove_dir_all(&origin);
    run_root(Command::new("git").args(["init", "--quiet", "--bare"]).arg(&origin));
    run_root(
        git()
            .arg("push")
            .arg("--quiet")
            .arg(&origin)
            .args([format!("{commit}:refs/heads/main"), format!("{commit}:refs/tags/v{version}")]),
    );
    std::os::unix::fs::chown(&origin, Some(ids.uid), Some(ids.gid)).unwrap();
    run_root(Command::new("chown").arg("-R").arg(format!("{}:{}", ids.uid, ids.gid)).arg(&origin));
    (origin, commit)
}

/// The job's outcome.
enum Outcome {
    Passed,
    Failed(String),
}

struct Job<'a> {
    workflow: &'a str,
    name: &'a str,
    doc: &'a Yaml,
    ids: &'a Ids,
    version: &'a str,
    origin: &'a Path,
    commit: &'a str,
}

impl Job<'_> {
    fn run(&self, part: &Part) -> Outcome {
        let job = &self.doc["jobs"][self.name];
        let (event, git_ref) = event_of(self.workflow, self.version);
        let ref_name = git_ref.rsplit('/').next().unwrap().to_owned();
        let workspace = home().join("work/truthdb-os/truthdb-os");
        let temp = home().join("work/_temp");
        let _ = fs::remove_dir_all(home().join("work"));
        self.as_user_ok(Command::new("mkdir").arg("-p").arg(&workspace).arg(&temp));
        // The fake /var/cache: root's, the cache directory not there yet.
        let var_cache = sandbox().join("var-cache");
        let _ = fs::remove_dir_all(&var_cache);
        fs::create_dir_all(&var_cache).unwrap();

        let mut github: BTreeMap<&str, String> = BTreeMap::new();
        github.insert("ref", git_ref.clone());
        github.insert("ref_name", ref_name.clone());
        github.insert("ref_type", if git_ref.starts_with("refs/tags/") { "tag" } else { "branch" }.into());
        github.insert("sha", self.commit.into());
        github.insert("repository", REPOSITORY.into());
        github.insert("repository_owner", OWNER.into());
        github.insert("actor", OWNER.into());
        github.insert("workspace", workspace.display().to_string());
        github.insert("event_name", event.into());

        let mut env: BTreeMap<String, String> = BTreeMap::new();
        let cargo_bin = home().join(".cargo/bin");
        for (key, value) in [
            ("HOME", home().display().to_string()),
            ("USER", USER.into()),
            ("LOGNAME", USER.into()),
            ("SHELL", "/bin/bash".into()),
            ("LANG", "C.UTF-8".into()),
            ("PATH", format!("{}:{SECURE_PATH}", cargo_bin.display())),
            ("CARGO_HOME", home().join(".cargo").display().to_string()),
            ("RUSTUP_HOME", home().join(".rustup").display().to_string()),
            ("CI", "true".into()),
            ("GITHUB_ACTIONS", "true".into()),
            ("GITHUB_WORKFLOW", self.doc["name"].as_str().unwrap_or(self.workflow).into()),
            ("GITHUB_JOB", self.name.into()),
            ("GITHUB_RUN_ID", "1".into()),
            ("GITHUB_RUN_NUMBER", "1".into()),
            ("GITHUB_RUN_ATTEMPT", "1".into()),
            ("GITHUB_SERVER_URL", "https://github.com".into()),
            ("GITHUB_API_URL", "https://api.github.com".into()),
            ("GITHUB_REPOSITORY", REPOSITORY.into()),
            ("GITHUB_REPOSITORY_OWNER", OWNER.into()),
            ("GITHUB_ACTOR", OWNER.into()),
            ("GITHUB_EVENT_NAME", event.into()),
            ("GITHUB_REF", git_ref.clone()),
            ("GITHUB_REF_NAME", ref_name.clone()),
            ("GITHUB_REF_TYPE", github["ref_type"].clone()),
            ("GITHUB_SHA", self.commit.into()),
            ("GITHUB_WORKSPACE", workspace.display().to_string()),
            ("GITHUB_EVENT_PATH", temp.join("event.json").display().to_string()),
            ("GITHUB_STEP_SUMMARY", temp.join("summary.md").display().to_string()),
            ("RUNNER_OS", "Linux".into()),
            ("RUNNER_ARCH", "X64".into()),
            ("RUNNER_TEMP", temp.display().to_string()),
            ("RUNNER_TOOL_CACHE", home().join("hostedtoolcache").display().to_string()),
        ] {
            env.insert(key.into(), value);
        }
        self.as_user_ok(
            Command::new("sh").arg("-c").arg(format!("echo '{{}}' > {}", temp.join("event.json").display())),
        );

        let mut ctx = Context { github, env: BTreeMap::new(), steps: BTreeMap::new() };
        for source in [&self.doc["env"], &job["env"]] {
            for (key, value) in source.as_hash().into_iter().flatten() {
                let key = key.as_str().unwrap().to_owned();
                let mut value = yaml_scalar(value);
                match ctx.expand(&value) {
                    Ok(v) => value = v,
                    Err(why) => {
                        eprintln!("    env {key}: {why}: left empty");
                        value = String::new();
                    }
                }
                if key == "TRUTHDB_CACHE_DIR" {
                    let here = var_cache.join("truthdb-os").display().to_string();
                    eprintln!("    env TRUTHDB_CACHE_DIR: {value} -> {here} (this host's caches stay untouched)");
                    value = here;
                }
                ctx.env.insert(key.clone(), value.clone());
                env.insert(key, value);
            }
        }

        let steps = job["steps"].as_vec().unwrap();
        let stop = match part {
            Part::All => steps.len(),
            Part::Before(text) => {
                steps.iter().position(|s| s["run"].as_str().is_some_and(|r| r.contains(text))).unwrap_or_else(|| {
                    panic!("{}/{}: no step runs {text:?}: where is the boundary?", self.workflow, self.name)
                })
            }
            Part::Skip(_) => unreachable!(),
        };
        let caches_target = steps[..stop].iter().any(|s| {
            s["uses"].as_str().is_some_and(|u| u.starts_with("actions/cache"))
                && s["with"]["path"].as_str().is_some_and(|p| p.lines().any(|l| l.trim() == "target"))
        });
        let target_cache = home().join("cache/target");
        let restored = caches_target && target_cache.is_dir();

        let mut outcome = Outcome::Passed;
        for (i, step) in steps.iter().enumerate() {
            let label = step["name"]
                .as_str()
                .or(step["uses"].as_str())
                .or(step["run"].as_str().and_then(|r| r.lines().next()))
                .unwrap_or("?")
                .to_owned();
            if i == stop {
                if let Part::Before(text) = part {
                    eprintln!("  -- stop before {label:?} (runs {text}: the heavy build)");
                }
                break;
            }
            if let Some(uses) = step["uses"].as_str() {
                if uses.starts_with("actions/checkout") {
                    let depth = if step["with"]["fetch-depth"].as_i64() == Some(0) {
                        "full history"
                    } else {
                        "shallow on GitHub, full here"
                    };
                    eprintln!("  [{label}] the test's own checkout: {git_ref} at {} ({depth})", &self.commit[..12]);
                    self.checkout(&workspace, &git_ref);
                    if restored {
                        eprintln!("    cargo target/ restored from {}", target_cache.display());
                        fs::rename(&target_cache, workspace.join("target")).unwrap();
                    }
                } else {
                    eprintln!("  [{label}] skipped: a GitHub action ({uses}), not a run: step");
                }
                continue;
            }
            if let Some(condition) = step["if"].as_str() {
                match ctx.condition(condition) {
                    Ok(true) => {}
                    Ok(false) => {
                        eprintln!("  [{label}] skipped: if: {condition} is false");
                        continue;
                    }
                    Err(why) => panic!("{}/{}: step {label:?}: if: {condition}: {why}", self.workflow, self.name),
                }
            }
            let script = step["run"].as_str().unwrap_or_else(|| panic!("step {label:?}: neither uses: nor run:"));
            if let Some(heavy) = HEAVY.iter().find(|h| script.contains(*h)) {
                panic!("{}/{}: step {label:?} runs {heavy} before the boundary", self.workflow, self.name);
            }
            let mut step_env = env.clone();
            let expanded = ctx.expand(script).and_then(|s| {
                for (key, value) in step["env"].as_hash().into_iter().flatten() {
                    step_env.insert(key.as_str().unwrap().into(), ctx.expand(&yaml_scalar(value))?);
                }
                Ok(s)
            });
            let script = match expanded {
                Ok(script) => script,
                Err(why) => {
                    eprintln!("  [{label}] skipped: {why}");
                    continue;
                }
            };
            let id = step["id"].as_str().map(str::to_owned);
            let (code, log, outputs, env_file, path_file) = self.step(i, &script, &step_env, &temp, &workspace);
            if let Some(id) = id {
                ctx.steps.insert(id, outputs);
            }
            for (key, value) in env_file {
                ctx.env.insert(key.clone(), value.clone());
                env.insert(key, value);
            }
            for dir in path_file {
                let path = format!("{dir}:{}", env["PATH"]);
                env.insert("PATH".into(), path);
            }
            if code != Some(0) {
                let tail: Vec<&str> = log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
                outcome = Outcome::Failed(format!(
                    "{}/{}: step {label:?} exited with {code:?}:\n{}",
                    self.workflow,
                    self.name,
                    tail.join("\n")
                ));
                break;
            }
        }
        // The cache is saved by a job that caches target/ (and moved back by any that had it).
        let target = workspace.join("target");
        if caches_target && target.is_dir() {
            let _ = fs::remove_dir_all(&target_cache);
            fs::create_dir_all(target_cache.parent().unwrap()).unwrap();
            fs::rename(&target, &target_cache).unwrap();
            eprintln!("    cargo target/ kept in {}", target_cache.display());
        }
        outcome
    }

    /// actions/checkout: the pushed commit (or tag), with origin, owned by the runner user.
    fn checkout(&self, workspace: &Path, git_ref: &str) {
        self.as_user_ok(
            Command::new("git").args(["clone", "--quiet", "--no-checkout"]).arg(self.origin).arg(workspace),
        );
        let what = git_ref.strip_prefix("refs/tags/").map(str::to_owned).unwrap_or_else(|| self.commit.to_owned());
        self.as_user_ok(Command::new("git").args(["checkout", "--quiet", "--detach", &what]).current_dir(workspace));
        // The files' times of this tree, so cargo's cache sees what changed since its last run;
        // only where the content is the same (a file changed since the snapshot keeps "now").
        let files =
            run_root(Command::new("git").args(["-c", "safe.directory=*", "ls-files", "-z"]).current_dir(workspace));
        for file in files.split('\0').filter(|f| !f.is_empty()) {
            let here = repo_root().join(file);
            if let Ok(meta) = fs::symlink_metadata(&here)
                && meta.is_file()
                && fs::read(&here).ok() == fs::read(workspace.join(file)).ok()
                && let Ok(handle) = fs::File::options().write(true).open(workspace.join(file))
            {
                handle.set_modified(meta.modified().unwrap()).unwrap();
            }
        }
    }

    fn user_command(&self, cmd: &mut Command) {
        cmd.uid(self.ids.uid).gid(self.ids.gid).env_clear().env("HOME", home()).env("PATH", SECURE_PATH);
    }

    fn as_user_ok(&self, cmd: &mut Command) {
        self.user_command(cmd);
        run_root(cmd);
    }

    /// One `run:` step as the runner runs it: a script file, GitHub's default shell, the
    /// job's environment and fresh GITHUB_OUTPUT, GITHUB_ENV and GITHUB_PATH files.
    #[allow(clippy::type_complexity)]
    fn step(
        &self,
        index: usize,
        script: &str,
        env: &BTreeMap<String, String>,
        temp: &Path,
        workspace: &Path,
    ) -> (Option<i32>, String, BTreeMap<String, String>, BTreeMap<String, String>, Vec<String>) {
        let file = |name: &str| temp.join(format!("{name}_{index}"));
        let script_file = temp.join(format!("step_{index}.sh"));
        fs::write(&script_file, script).unwrap();
        for name in ["output", "env", "path"] {
            fs::write(file(name), "").unwrap();
        }
        run_root(Command::new("chown").arg("-R").arg(format!("{}:{}", self.ids.uid, self.ids.gid)).arg(temp));
        let log_path = sandbox().join("logs").join(format!(
            "{}-{}-{index:02}.log",
            self.workflow.trim_end_matches(".yml"),
            self.name
        ));
        fs::create_dir_all(log_path.parent().unwrap()).unwrap();
        let log = fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new("bash");
        self.user_command(&mut cmd);
        cmd.args(["--noprofile", "--norc", "-eo", "pipefail"])
            .arg(&script_file)
            .envs(env)
            .env("GITHUB_OUTPUT", file("output"))
            .env("GITHUB_ENV", file("env"))
            .env("GITHUB_PATH", file("path"))
            .current_dir(workspace)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let started = Instant::now();
        eprintln!("  [{}] $ {}", index, script.trim().replace('\n', "\n      "));
        let status = cmd.status().unwrap();
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        for line in text.lines() {
            eprintln!("    | {line}");
        }
        eprintln!("    -> {status} in {:.1}s", started.elapsed().as_secs_f64());
        let read = |name: &str| fs::read_to_string(file(name)).unwrap_or_default();
        let paths = read("path").lines().map(str::to_owned).filter(|l| !l.is_empty()).collect();
        (status.code(), text, parse_env_file(&read("output")), parse_env_file(&read("env")), paths)
    }
}

/// `key=value` lines and `key<<DELIMITER` blocks, as GITHUB_OUTPUT and GITHUB_ENV hold them.
fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some((key, delimiter)) = line.split_once("<<") {
            let value: Vec<&str> = lines.by_ref().take_while(|l| *l != delimiter).collect();
            out.insert(key.to_owned(), value.join("\n"));
        } else if let Some((key, value)) = line.split_once('=') {
            out.insert(key.to_owned(), value.to_owned());
        }
    }
    out
}

fn yaml_scalar(value: &Yaml) -> String {
    match value {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// The expression contexts a runner gives `${{ ... }}`, as far as this test knows them.
struct Context {
    github: BTreeMap<&'static str, String>,
    env: BTreeMap<String, String>,
    steps: BTreeMap<String, BTreeMap<String, String>>,
}

impl Context {
    /// The value of one expression; `Err` says why the step cannot run here.
    fn value(&self, expr: &str) -> Result<String, String> {
        let expr = expr.trim();
        if let Some(literal) = expr.strip_prefix('\'').and_then(|e| e.strip_suffix('\'')) {
            return Ok(literal.replace("''", "'"));
        }
        let parts: Vec<&str> = expr.split('.').collect();
        match parts.as_slice() {
            ["secrets", ..] | ["vars", ..] | ["github", "token"] => Err(format!("needs {expr} (a secret or setting)")),
            ["github", key] => self.github.get(key).cloned().ok_or_else(|| format!("unknown context {expr}")),
            ["env", key] => Ok(self.env.get(*key).cloned().unwrap_or_default()),
            ["runner", "os"] => Ok("Linux".into()),
            // A skipped action's outputs are empty, as a cache miss leaves them.
            ["steps", id, "outputs", key] => {
                Ok(self.steps.get(*id).and_then(|o| o.get(*key)).cloned().unwrap_or_default())
            }
            _ => Err(format!("the test cannot evaluate ${{{{ {expr} }}}}")),
        }
    }

    fn expand(&self, text: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${{") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find("}}").ok_or("unclosed ${{")? + start;
            out.push_str(&self.value(&rest[start + 3..end])?);
            rest = &rest[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// `if:` as these workflows write it: always(), success(), or one `==` / `!=`.
    fn condition(&self, condition: &str) -> Result<bool, String> {
        let c = condition.trim().trim_start_matches("${{").trim_end_matches("}}").trim();
        match c {
            "always()" | "success()" => return Ok(true),
            "failure()" | "cancelled()" => return Ok(false),
            _ => {}
        }
        if let Some((a, b)) = c.split_once("!=") {
            return Ok(self.value(a)? != self.value(b)?);
        }
        if let Some((a, b)) = c.split_once("==") {
            return Ok(self.value(a)? == self.value(b)?);
        }
        Err("the test cannot evaluate this condition".into())
    }
}

#[test]
#[ignore = "needs root: creates the runner user, installs sudo, writes /etc/sudoers.d; minutes of cargo"]
fn workflows_run_as_a_runner_user() {
    assert!(
        run_root(Command::new("id").arg("-u")).trim() == "0",
        "needs root (it creates the user {USER} and its sudoers drop-in)"
    );
    let started = Instant::now();
    let version = env!("CARGO_PKG_VERSION");
    let ids = ensure_runner_user();
    ensure_user_toolchain();
    let (origin, commit) = publish_origin(version, &ids);
    eprintln!("==> runner user {USER} (uid {}), origin {} at {commit}", ids.uid, origin.display());

    // The workflows of the commit the jobs check out (this tree when the test started).
    let git = |args: &[&str]| run_root(Command::new("git").args(args).current_dir(repo_root()));
    let names: Vec<String> = git(&["ls-tree", "--name-only", &commit, ".github/workflows/"])
        .lines()
        .filter_map(|l| l.strip_prefix(".github/workflows/").map(str::to_owned))
        .collect();
    let mut failures = Vec::new();
    let mut table = Vec::new();
    for workflow in &names {
        let text = git(&["show", &format!("{commit}:.github/workflows/{workflow}")]);
        let doc = YamlLoader::load_from_str(&text).unwrap().remove(0);
        for (name, _) in doc["jobs"].as_hash().unwrap() {
            let name = name.as_str().unwrap();
            let part = PLAN
                .iter()
                .find(|(w, j, _)| w == workflow && *j == name)
                .map(|(_, _, part)| part)
                .unwrap_or_else(|| panic!("{workflow}/{name} is not in PLAN: say where it stops"));
            eprintln!("==> {workflow} / {name}");
            if let Part::Skip(reason) = part {
                eprintln!("  skipped: {reason}");
                table.push(format!("{workflow}/{name}: skipped ({reason})"));
                continue;
            }
            let job_started = Instant::now();
            let job = Job { workflow, name, doc: &doc, ids: &ids, version, origin: &origin, commit: &commit };
            let result = job.run(part);
            let took = job_started.elapsed().as_secs_f64();
            match result {
                Outcome::Passed => table.push(format!("{workflow}/{name}: ok in {took:.0}s")),
                Outcome::Failed(why) => {
                    table.push(format!("{workflow}/{name}: FAILED in {took:.0}s"));
                    failures.push(why);
                }
            }
        }
    }
    eprintln!("\n{}\nin {:.0}s", table.join("\n"), started.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
