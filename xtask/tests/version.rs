//! One version names everything: the rendered image's os-release, the ISO's file and volume
//! names and the release tag all come from the workspace version in Cargo.toml, also when a
//! nightly suffix is added. (The installer's --version is checked in installer/tests.)

mod common;

use std::fs;

use common::{ProjectCopy, stderr};

fn os_release_field(text: &str, key: &str) -> String {
    text.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or_default().trim_matches('"').to_owned()
}

fn render(project: &ProjectCopy, extra: &[&str]) -> std::path::PathBuf {
    let out = project.path("rendered");
    let mut args: Vec<&str> = extra.to_vec();
    let out_arg = out.to_str().unwrap().to_owned();
    args.extend(["config", "--out", &out_arg]);
    let result = project.xtask(&args);
    assert!(result.status.success(), "{}", stderr(&result));
    out
}

#[test]
fn image_names_and_os_release_carry_the_workspace_version() {
    let project = ProjectCopy::new();
    let cargo = fs::read_to_string(project.path("Cargo.toml")).unwrap();
    project.write(
        "Cargo.toml",
        &cargo.replace(&format!("version = \"{}\"", env!("CARGO_PKG_VERSION")), "version = \"4.5.6\""),
    );
    let out = render(&project, &[]);
    let os_release = fs::read_to_string(out.join("config/includes.chroot/etc/os-release")).unwrap();
    assert_eq!(os_release_field(&os_release, "VERSION_ID"), "4.5.6");
    assert_eq!(os_release_field(&os_release, "IMAGE_VERSION"), "4.5.6");
    let auto = fs::read_to_string(out.join("auto/config")).unwrap();
    assert!(auto.contains("--image-name truthdb-os-4.5.6 "), "{auto}");
    assert!(auto.contains("--iso-volume 'TruthDB 4.5.6'"), "{auto}");

    let tag = project.xtask(&["release", "--check-only", "--dry-run", "--tag", "v4.5.6"]);
    assert!(tag.status.success(), "{}", stderr(&tag));
}

#[test]
fn a_nightly_suffix_labels_everything() {
    let project = ProjectCopy::new();
    let out = render(&project, &["--version-suffix", "nightly.20261122"]);
    let version = format!("{}-nightly.20261122", env!("CARGO_PKG_VERSION"));
    let os_release = fs::read_to_string(out.join("config/includes.chroot/etc/os-release")).unwrap();
    assert_eq!(os_release_field(&os_release, "IMAGE_VERSION"), version);
    let auto = fs::read_to_string(out.join("auto/config")).unwrap();
    assert!(auto.contains(&format!("--image-name truthdb-os-{version} ")), "{auto}");
}
