//! Stage "config render": turns the project's inputs into a live-build configuration tree.
//!
//! Input: the manifest, the version, `lb-config/` (a mirror of live-build's `auto/` and
//! `config/` in which `*.j2` files are minijinja templates and everything else is copied
//! verbatim), `packages.list`, `hooks/` and `overlay/`. Output: a directory a packager can
//! read and diff, and that `lb config && lb build` consume unchanged:
//!
//! ```text
//! auto/config                          lb config options (from the manifest)
//! config/package-lists/*.list.chroot   from packages.list
//! config/hooks/normal/*.hook.{chroot,binary}   from hooks/, unchanged
//! config/includes.chroot/...           from overlay/ (modes and symlinks kept; `*.j2` rendered)
//! config/bootloaders/...               menus with a timeout and the serial console
//! ```
//!
//! The kernel package itself is a build product, not an input: the lb build stage adds it to
//! `config/packages.chroot/`.
//!
//! Rendering is pure: the same inputs give the same bytes (golden tests in `tests/render.rs`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use truthdb_installer::spec::{IMAGE_SPEC_PATH, ImageSpec, PayloadSpec};

use crate::project::Project;
use crate::project::appliance::{Appliance, PROFILES_DIR};
use crate::project::kernel_pin::LiveBuildKernel;
use crate::project::package_list::{Conditions, PackageList};
use crate::util::{digest, fsx};

/// Where each input of the render lives.
#[derive(Clone, Debug)]
pub struct RenderInputs {
    pub appliance: Appliance,
    pub version: String,
    pub lb_config_dir: PathBuf,
    pub packages_list: PathBuf,
    pub hooks_dir: PathBuf,
    pub overlay_dir: PathBuf,
    /// Which kernel package live-build installs (ours, from `kernel/kernel.toml`).
    pub kernel: LiveBuildKernel,
}

impl RenderInputs {
    pub fn of(project: &Project) -> RenderInputs {
        RenderInputs {
            appliance: project.appliance.clone(),
            version: project.version.clone(),
            lb_config_dir: project.lb_config_dir(),
            packages_list: project.packages_list(),
            hooks_dir: project.hooks_dir(),
            overlay_dir: project.overlay_dir(),
            kernel: project.kernel_pin.live_build_selection(),
        }
    }
}

/// A rendered live-build configuration.
#[derive(Clone, Debug)]
pub struct LiveBuildTree {
    pub dir: PathBuf,
    /// Digest of the whole rendered tree: what live-build will be given.
    pub digest: String,
    /// The package list, kept for the archive check before `lb build`.
    pub packages: PackageList,
}

/// The values templates can use. Adding a field here is the only way to expose a new one.
#[derive(Serialize)]
struct TemplateContext<'a> {
    name: &'a str,
    pretty_name: &'a str,
    version: &'a str,
    suite: &'a str,
    architecture: &'a str,
    archive_areas: String,
    mirror_archive: &'a str,
    mirror_security: &'a str,
    kernel_command_line: String,
    /// `boot.serial_console`, e.g. ttyS0,115200.
    serial_console: &'a str,
    menu_timeout_seconds: u32,
    iso_volume: String,
    iso_publisher: &'a str,
    iso_application: &'a str,
    image_name: String,
    packages: Vec<&'a str>,
    kernel: &'a LiveBuildKernel,
    /// The payload profile's name ("" for a `[payload]` written in appliance.toml itself).
    payload_profile: &'a str,
    /// TCP ports the installed system's firewall lets in besides SSH.
    payload_ports: &'a [u16],
}

/// The manifest file sits in `lb-config/` but is input to the render, not part of its output.
const MANIFEST_FILE: &str = "appliance.toml";
const HOOK_SUFFIXES: [&str; 2] = [".hook.chroot", ".hook.binary"];
/// Where the extra apt repositories' keys live by convention (`lb-config/apt-keys/`): read
/// through the manifest, not copied into the tree as they are.
const APT_KEYS_DIR: &str = "apt-keys";

/// The manifest's extra apt repositories as live-build's own archive files: `<name>.list`,
/// `<name>.key` and, when pinned, `<name>.pref`, each with the `.chroot` suffix (used while the
/// packages are installed) and `.binary` (kept in the image, so the installed system's apt
/// still knows the repository).
fn write_apt_repositories(inputs: &RenderInputs, config: &Path) -> Result<()> {
    for repository in &inputs.appliance.apt_repositories {
        let key_path = inputs.lb_config_dir.join(&repository.key);
        let key = fs::read_to_string(&key_path).with_context(|| {
            format!("reading the key of apt repository {:?} ({})", repository.name, key_path.display())
        })?;
        if !key.contains("-----BEGIN PGP PUBLIC KEY BLOCK-----") {
            bail!(
                "lb-config/{}: the key of apt repository {:?} is not an armored OpenPGP public key \
                 (export it with `gpg --armor --export`)",
                repository.key,
                repository.name
            );
        }
        let mut files = vec![("list", repository.sources_line()), ("key", key)];
        if let Some(priority) = repository.pin_priority {
            let pin = format!("Package: *\nPin: origin \"{}\"\nPin-Priority: {priority}\n", repository.origin());
            files.push(("pref", pin));
        }
        for (kind, text) in files {
            for stage in ["chroot", "binary"] {
                let rel = format!("archives/{}.{kind}.{stage}", repository.name);
                if config.join(&rel).symlink_metadata().is_ok() {
                    bail!("lb-config/config/{rel} exists and apt repository {:?} would replace it", repository.name);
                }
                fsx::write_in_tree(config, rel, &text)?;
            }
        }
    }
    Ok(())
}

/// Renders into `out`, replacing whatever was there. The tree is assembled beside `out` and
/// renamed into place, so `out` is never a half-rendered mix.
pub fn render(inputs: &RenderInputs, out: &Path) -> Result<LiveBuildTree> {
    for (what, dir) in
        [("lb-config", &inputs.lb_config_dir), ("hooks", &inputs.hooks_dir), ("overlay", &inputs.overlay_dir)]
    {
        if !dir.is_dir() {
            bail!("the {what} directory {} is missing", dir.display());
        }
    }
    let manifest_path = inputs.lb_config_dir.join(MANIFEST_FILE);
    let conditions = Conditions {
        architecture: inputs.appliance.architecture.clone(),
        distribution: inputs.appliance.suite.clone(),
    };
    let packages = PackageList::load(&inputs.packages_list, &conditions)?
        .with_payload(&inputs.appliance.payload.packages, &manifest_path)?;

    let parent = out.parent().context("render output has no parent directory")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging =
        parent.join(format!(".{}.rendering", out.file_name().context("render output has no name")?.to_string_lossy()));
    fsx::remove_if_present(&staging)?;
    fs::create_dir_all(&staging)?;

    let context = template_context(inputs, &packages);
    let result = (|| {
        for (dir, home) in ONE_HOME {
            if inputs.lb_config_dir.join(dir).exists() {
                bail!("lb-config/{dir}/ exists: its files belong in {home} (one place for each kind of input)");
            }
        }
        render_tree(
            &inputs.lb_config_dir,
            "lb-config",
            &staging,
            &context,
            &[MANIFEST_FILE, APT_KEYS_DIR, PROFILES_DIR],
        )?;
        write_apt_repositories(inputs, &staging.join("config"))?;
        copy_hooks(&inputs.hooks_dir, &staging.join("config/hooks/normal"))?;
        render_tree(&inputs.overlay_dir, "overlay", &staging.join("config/includes.chroot"), &context, &["README.md"])?;
        write_image_spec(inputs, &staging.join("config/includes.chroot"))?;
        Ok::<_, anyhow::Error>(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    fsx::remove_if_present(out)?;
    fs::rename(&staging, out).with_context(|| format!("moving rendered config into {}", out.display()))?;
    let digest = digest::tree_digest(out)?;
    Ok(LiveBuildTree { dir: out.to_owned(), digest, packages })
}

/// What the image tells its installer (`/usr/lib/truthdb/image.toml`) and the installed
/// system's health check (`/usr/lib/truthdb/health-check`, run by the boot marker).
fn write_image_spec(inputs: &RenderInputs, includes: &Path) -> Result<()> {
    let m = &inputs.appliance;
    let spec = ImageSpec {
        version: inputs.version.clone(),
        kernel_cmdline: m.installed_kernel_parameters(),
        payload: PayloadSpec {
            services: m.payload.services.clone(),
            health_check: m.payload.health_check.clone(),
            data_mount: m.payload.data_mount.clone(),
            configure: m.payload.configure.clone(),
            min_data_gib: m.payload.min_data_gib,
            tds_port: m.payload.tds_port,
        },
    };
    let header = match &m.payload.profile {
        Some(profile) => format!(
            "# Rendered by `cargo xtask config` from lb-config/appliance.toml and payloads/{profile}.toml: read by \
             truthdb-installer.\n"
        ),
        None => "# Rendered by `cargo xtask config` from lb-config/appliance.toml: read by truthdb-installer.\n".into(),
    };
    let spec_path = fsx::write_in_tree(includes, IMAGE_SPEC_PATH, format!("{header}{}", spec.to_toml()))?;
    let dir = spec_path.parent().context("image spec path has a parent")?;
    let script = format!(
        "#!/bin/sh\n# Rendered from `payload.health_check` of the payload ({}).\n{}\n",
        m.payload
            .profile
            .as_deref()
            .map_or("lb-config/appliance.toml".to_owned(), |p| format!("lb-config/payloads/{p}.toml")),
        m.payload.health_check
    );
    let check = fsx::write_in_tree(includes, dir.strip_prefix(includes)?.join("health-check"), script)?;
    fsx::set_mode(&check, 0o755)?;
    Ok(())
}

fn template_context<'a>(inputs: &'a RenderInputs, packages: &'a PackageList) -> TemplateContext<'a> {
    let m = &inputs.appliance;
    TemplateContext {
        name: &m.name,
        pretty_name: &m.pretty_name,
        version: &inputs.version,
        suite: &m.suite,
        architecture: &m.architecture,
        archive_areas: m.archive_areas.join(" "),
        mirror_archive: &m.mirrors.archive,
        mirror_security: &m.mirrors.security,
        kernel_command_line: m.kernel_command_line(),
        serial_console: &m.boot.serial_console,
        menu_timeout_seconds: m.boot.menu_timeout_seconds,
        iso_volume: m.volume_id(&inputs.version),
        iso_publisher: &m.iso.publisher,
        iso_application: &m.iso.application,
        image_name: m.image_name(&inputs.version),
        packages: packages.names().collect(),
        kernel: &inputs.kernel,
        payload_profile: m.payload.profile.as_deref().unwrap_or(""),
        payload_ports: &m.payload.ports,
    }
}

/// The template engine every `*.j2` is rendered with.
fn template_env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    // A misspelt variable is an error, not an empty string in a boot menu.
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    // Values land in a shell script (`auto/config`) and in `/etc/os-release`, which the image
    // sources as root: each template says how its values are quoted for where they land.
    env.add_filter("sh", |value: String| shell_quote(&value));
    env.add_filter("os_release", |value: String| os_release_quote(&value));
    env
}

/// The live-build directories whose content has one home in the project: image files are
/// `overlay/`, hooks are `hooks/` (one place each, so nobody has to look in two).
const ONE_HOME: [(&str, &str); 2] = [("config/includes.chroot", "overlay/"), ("config/hooks", "hooks/")];

/// Renders the tree `src` (named `label` in messages) into `dest`: `*.j2` files become the file
/// without the suffix, everything else is copied with its mode (symlinks as symlinks, owned by
/// root). A plain file beside its own template, or an entry that already exists in `dest`, is
/// refused: nothing is silently replaced. `skip` names top-level entries not to copy.
fn render_tree(src: &Path, label: &str, dest: &Path, context: &TemplateContext, skip: &[&str]) -> Result<()> {
    let mut env = template_env();
    let mut templates: BTreeMap<PathBuf, (PathBuf, u32)> = BTreeMap::new();
    let walker = walkdir::WalkDir::new(src).follow_links(false).sort_by_file_name().into_iter();
    for entry in walker.filter_entry(|e| e.depth() != 1 || !skip.iter().any(|s| e.file_name() == *s)) {
        let entry = entry.with_context(|| format!("walking {}", src.display()))?;
        let rel = entry.path().strip_prefix(src).expect("under src");
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = dest.join(rel);
        fsx::refuse_symlinks_on_path(dest, &target)?;
        let kind = entry.file_type();
        let mode = fsx::mode(&entry.metadata()?);
        if kind.is_dir() {
            fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
            fsx::set_mode(&target, mode)?;
            fsx::chown_root(&target)?;
            continue;
        }
        let plain = rel.with_extension("");
        let output = if kind.is_file() && rel.extension().is_some_and(|e| e == "j2") { &plain } else { rel };
        if dest.join(output).symlink_metadata().is_ok() {
            bail!("{label}/{} would overwrite {}", rel.display(), dest.join(output).display());
        }
        if output == rel {
            fsx::copy_entry(entry.path(), &target)?;
            continue;
        }
        if src.join(&plain).symlink_metadata().is_ok() {
            bail!(
                "{label}/{} and {label}/{} both exist: the template would silently replace the file; keep one",
                plain.display(),
                rel.display()
            );
        }
        let source =
            fs::read_to_string(entry.path()).with_context(|| format!("reading template {}", entry.path().display()))?;
        env.add_template_owned(rel.display().to_string(), source)
            .with_context(|| format!("parsing template {}", entry.path().display()))?;
        templates.insert(rel.to_owned(), (dest.join(&plain), mode));
    }
    for (rel, (target, mode)) in templates {
        fsx::refuse_symlinks_on_path(dest, &target)?;
        let name = rel.display().to_string();
        let text = env
            .get_template(&name)
            .and_then(|t| t.render(context))
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .with_context(|| format!("rendering template {label}/{name}"))?;
        fs::write(&target, text).with_context(|| format!("writing {}", target.display()))?;
        fsx::set_mode(&target, mode)?;
        fsx::chown_root(&target)?;
    }
    Ok(())
}

/// Quotes `value` as one POSIX shell word: bare when it holds only characters no shell treats
/// specially (so `auto/config` stays readable), else in single quotes, inside which nothing is
/// special; a `'` becomes `'\''`.
pub fn shell_quote(value: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_./:=,+-@%".contains(c);
    if !value.is_empty() && value.chars().all(plain) {
        return value.to_owned();
    }
    format!("'{}'", value.replace('\'', "'\\''"))
}

/// Quotes `value` for `/etc/os-release` as os-release(5) asks: in double quotes, with `\`, `"`,
/// `$` and `` ` `` escaped by a backslash, so a shell sourcing the file reads it verbatim.
pub fn os_release_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '\\' | '"' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Copies live-build hooks unchanged, refusing files live-build would silently ignore.
fn copy_hooks(src: &Path, dest: &Path) -> Result<()> {
    fs::create_dir_all(dest)?;
    let mut names: Vec<_> = fs::read_dir(src)
        .with_context(|| format!("reading hooks directory {}", src.display()))?
        .collect::<Result<_, _>>()?;
    names.sort_by_key(|e| e.file_name());
    for entry in names {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "README.md" {
            continue;
        }
        if !HOOK_SUFFIXES.iter().any(|s| name.ends_with(s)) {
            bail!("hook {}: live-build only runs files named *.hook.chroot or *.hook.binary", path.display());
        }
        let meta = fs::metadata(&path).with_context(|| format!("reading hook {}", path.display()))?;
        if !meta.is_file() {
            bail!("hook {} is not a regular file", path.display());
        }
        if fsx::mode(&meta) & 0o111 == 0 {
            bail!("hook {} is not executable (chmod +x it)", path.display());
        }
        fsx::copy_entry(&path, &dest.join(&name))?;
    }
    Ok(())
}

/// `cargo xtask config`: render only.
#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    /// Output directory (default: target/truthdb-os/config).
    #[arg(long)]
    out: Option<PathBuf>,
}

impl ConfigArgs {
    pub fn run(self, project: &Project) -> Result<()> {
        run_config_command(project, self.out)
    }
}

fn run_config_command(project: &Project, out: Option<PathBuf>) -> Result<()> {
    let out = out.unwrap_or_else(|| project.default_live_build_tree_dir());
    let rendered = render(&RenderInputs::of(project), &out)?;
    println!("rendered live-build configuration into {}", rendered.dir.display());
    println!("config digest: {}", rendered.digest);
    println!(
        "to build it by hand with `lb config && lb build`, first add what the lb build stage adds: the kernel \
         package (`cargo xtask kernel` prints its path) and payload .debs into config/packages.chroot/, and \
         the installer binaries truthdb-installer and truthdb-installer-gui into config/includes.chroot/usr/bin/"
    );
    Ok(())
}
