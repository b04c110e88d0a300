//! The live-build chroot with every package installed, cached by exactly what goes into it.
//!
//! `lb chroot` first installs the packages (minutes: debootstrap, the package lists, our kernel
//! and payload .debs) and only then applies what changes most often: the overlay and the
//! installer binaries (includes), the hooks, live-build's hacks. [`lb_build`](crate::stages::lb_build)
//! therefore runs live-build's own helpers in `lb build`'s order itself, in two scripts split
//! where the package set is complete ([`PACKAGES_SCRIPT`], [`CUSTOMISE_SCRIPT`]), and keeps a
//! copy of the chroot (with live-build's stage files) at that point, keyed by [`PackagesKey`].
//!
//! The key covers everything live-build reads before the split: the build root (live-build's
//! version, debootstrap), `auto/config` (mirrors, suite, areas, options), every `config/` tree
//! except the few live-build only reads after it ([`AFTER_PACKAGES`]), the .debs in
//! `config/packages.chroot/` by content, and the split script itself. A change to an overlay
//! file, a hook or the installer binaries re-runs only the customisation and the binary
//! stage; anything else rebuilds the chroot. When in doubt, a path belongs in the key: a
//! needless rebuild costs minutes, a stale chroot costs trust.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::util::digest::Hasher;
use crate::util::fsx;
use crate::util::lock;
use crate::util::run::Cmd;

/// Bootstrap and package installation: `lb bootstrap`, then `lb chroot`'s helpers up to the
/// complete package set. Ends by unmounting what `chroot_prep` mounted (the mounts would die
/// with the namespace anyway; unmounting through live-build also drops their stage files, and
/// moves `/var/lib/dpkg` back from a tmpfs if `--build-with-tmpfs` is on), so the chroot can
/// be copied as it is. Everything else `chroot_prep` configured stays, with its stage files.
/// It first notes when it started, beside the stage files (kept with a cached chroot): see
/// [`CUSTOMISE_SCRIPT`].
pub const PACKAGES_SCRIPT: &str = r#"set -e
date +%s.%N > .build/truthdb-packages-started
lb bootstrap
lb chroot_prep install all mode-archives-chroot
lb chroot_linux-image
lb chroot_firmware
lb chroot_preseed
lb chroot_includes_before_packages
for pass in install live; do
	lb chroot_package-lists "$pass"
	lb chroot_install-packages "$pass"
	if [ "$pass" = install ]; then
		chroot chroot /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-query -W > chroot.packages.install
	fi
done
lb chroot_prep remove "devpts proc selinuxfs sysfs tmpfs"
"#;

/// The rest of `lb build` after the split: mount again, includes, hooks, hacks, deconfigure,
/// then live-build's own `installer`, `binary` and `source` stages. With `--debian-installer
/// none` (what auto/config says) the installer stage makes nothing: it only copies the chroot
/// and refreshes apt's indices twice (about a minute), so it runs only when an installer is wanted.
///
/// It starts by setting every time the packages script made (anything newer than its start)
/// to SOURCE_DATE_EPOCH. mksquashfs clamps only times after SOURCE_DATE_EPOCH (the commit's
/// time), so without this a chroot cached before the commit was made kept its own build's
/// times in the image while a chroot made afresh had them clamped: two builds of one commit
/// differed in 2,652 entries' times (BENCHMARKS.md, issue 17).
pub const CUSTOMISE_SCRIPT: &str = r#"set -e
find chroot -xdev -newermt "@$(cat .build/truthdb-packages-started)" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" -- {} +
lb chroot_prep install all mode-archives-chroot
lb chroot_includes_after_packages
lb chroot_hooks
lb chroot_hacks
lb chroot_interactive
chroot chroot /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-query -W > chroot.packages.live
lb chroot_prep remove all mode-archives-chroot
chroot chroot ls -lR > chroot.files
if ! grep -qx 'LB_DEBIAN_INSTALLER="none"' config/binary; then
	lb installer
fi
lb binary
lb source
"#;

/// `config/` trees live-build reads only after the package set is complete: includes copied by
/// `chroot_includes_after_packages` (both its names), hooks, and the binary stage's own inputs.
pub const AFTER_PACKAGES: [&str; 5] =
    ["includes.chroot", "includes.chroot_after_packages", "hooks", "includes.binary", "bootloaders"];

/// `lb config` options only live-build's binary stage reads (boot menus, ISO labels, the
/// image's file name; checked against live-build 1:20250505: only `binary_*` and `source_*`
/// use them). Left out of the key, so a new version (in the volume id and the image name) or
/// kernel parameter reuses the chroot, and leaves a package lock fresh.
pub const BINARY_ONLY_OPTIONS: [&str; 5] =
    ["--bootappend-live", "--iso-volume", "--iso-publisher", "--iso-application", "--image-name"];

/// The digest of `auto/`, with the lines of `auto/config` that set a [`BINARY_ONLY_OPTIONS`]
/// option left out (the rendered script gives each option a line of its own), and its comments
/// (the header names the version).
fn auto_digest(auto: &Path) -> Result<String> {
    let mut hasher = Hasher::new();
    let mut names: Vec<_> =
        fs::read_dir(auto).with_context(|| format!("reading {}", auto.display()))?.collect::<Result<_, _>>()?;
    names.sort_by_key(|e| e.file_name());
    for entry in names {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "config" && entry.file_type()?.is_file() {
            let text =
                fs::read_to_string(entry.path()).with_context(|| format!("reading {}", entry.path().display()))?;
            let kept: String = text
                .lines()
                .filter(|l| {
                    !l.split_whitespace()
                        .next()
                        .is_some_and(|word| word.starts_with('#') || BINARY_ONLY_OPTIONS.contains(&word))
                })
                .map(|l| format!("{l}\n"))
                .collect();
            hasher.field("auto/config", kept);
        } else {
            hasher.tree(&name, &entry.path())?;
        }
    }
    Ok(hasher.hex())
}

/// A digest of each input live-build reads before the package set is complete, in a rendered
/// live-build tree or a build directory: `auto/` (less [`BINARY_ONLY_OPTIONS`]) and every
/// `config/` tree but [`AFTER_PACKAGES`] (in a build directory, `config/packages.chroot/` with
/// our kernel's and the payload's .debs). Part of the chroot's key, and what a package lock
/// is checked against.
pub fn package_inputs(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut parts = BTreeMap::new();
    parts.insert("auto/".to_owned(), auto_digest(&dir.join("auto"))?);
    let config = dir.join("config");
    for entry in fs::read_dir(&config).with_context(|| format!("reading {}", config.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if AFTER_PACKAGES.contains(&name.as_str()) {
            continue;
        }
        let digest = if entry.file_type()?.is_dir() {
            crate::util::digest::tree_digest(&entry.path())?
        } else {
            Hasher::new().tree("file", &entry.path())?.hex()
        };
        parts.insert(format!("config/{name}"), digest);
    }
    Ok(parts)
}

/// What one cached chroot was made from: a digest per input, and one over all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackagesKey {
    pub parts: BTreeMap<String, String>,
    pub hex: String,
}

impl PackagesKey {
    /// The inputs of the chroot in the live-build tree `build_dir` (rendered config and .debs
    /// in place, before `lb config` writes its own files) and the build root `build_root_key`.
    pub fn of(build_dir: &Path, build_root_key: &str) -> Result<PackagesKey> {
        let mut parts = package_inputs(build_dir)?;
        parts.insert("build root".to_owned(), build_root_key.to_owned());
        parts.insert("split script".to_owned(), Hasher::new().field("script", PACKAGES_SCRIPT).hex());
        let mut all = Hasher::new();
        for (name, digest) in &parts {
            all.field(name, digest);
        }
        Ok(PackagesKey { hex: all.hex(), parts })
    }

    /// The inputs whose digest differs from `other`'s (added or removed ones too).
    pub fn changed_since(&self, other: &BTreeMap<String, String>) -> Vec<String> {
        let mut names: Vec<&String> = self.parts.keys().chain(other.keys()).collect();
        names.sort();
        names.dedup();
        names.into_iter().filter(|n| self.parts.get(*n) != other.get(*n)).cloned().collect()
    }

    fn entry_name(&self) -> &str {
        &self.hex[..16]
    }
}

/// Where cached chroots live: `<cache>/lb-chroots/<key>/` holding `chroot/`, `stages/` (the
/// live-build stage files at the split), `chroot.packages.install` and `inputs` (the key's parts).
pub struct ChrootCache {
    dir: PathBuf,
}

/// What [`ChrootCache::restore`] did.
pub enum Restored {
    /// The build directory now holds the cached chroot.
    Hit,
    /// No entry for this key; says why (which inputs differ from the newest entry).
    Miss(String),
}

/// How many chroots to keep (each is a full root file system, about a gigabyte): the newest
/// ones, so switching between two branches stays fast.
const KEEP: usize = 2;

/// Files the packages script leaves beside the chroot that later stages read (binary_manifest
/// lists the packages of the install pass from it): saved and restored with the chroot.
const FILES: [&str; 1] = ["chroot.packages.install"];

impl ChrootCache {
    pub fn new(cache_dir: &Path) -> ChrootCache {
        ChrootCache { dir: cache_dir.join("lb-chroots") }
    }

    fn entry(&self, key: &PackagesKey) -> PathBuf {
        self.dir.join(key.entry_name())
    }

    /// Copies the cached chroot for `key` into `build_dir` (which holds no chroot yet), if
    /// `refuse` has nothing against the cached chroot (a locked build refuses one whose
    /// packages are not the lock's: the key says what was asked for, not what the archive gave).
    pub fn restore(
        &self,
        key: &PackagesKey,
        build_dir: &Path,
        refuse: &dyn Fn(&Path) -> Result<Option<String>>,
    ) -> Result<Restored> {
        let entry = self.entry(key);
        let _lock = lock::cache_entry(&entry)?;
        if !entry.join("inputs").is_file() {
            return Ok(Restored::Miss(self.why_missing(key)));
        }
        if let Some(why) = refuse(&entry.join("chroot"))? {
            return Ok(Restored::Miss(why));
        }
        copy_tree_exact(&entry.join("chroot"), &build_dir.join("chroot"))?;
        let stages = build_dir.join(".build");
        fs::create_dir_all(&stages)?;
        for stage in fs::read_dir(entry.join("stages"))? {
            let stage = stage?;
            let dest = stages.join(stage.file_name());
            // `lb config` just wrote its own stage file; keep that one.
            if !dest.exists() {
                fs::copy(stage.path(), &dest).with_context(|| format!("restoring {}", dest.display()))?;
            }
        }
        for file in FILES {
            fs::copy(entry.join(file), build_dir.join(file)).with_context(|| format!("restoring {file}"))?;
        }
        let _ = fs::File::open(&entry).and_then(|d| d.set_modified(std::time::SystemTime::now()));
        Ok(Restored::Hit)
    }

    fn why_missing(&self, key: &PackagesKey) -> String {
        let Some(newest) = self.entries().into_iter().next() else {
            return "no chroot cached yet".to_owned();
        };
        let Ok(parts) = read_inputs(&newest.join("inputs")) else {
            return "no readable chroot cached".to_owned();
        };
        let changed = key.changed_since(&parts);
        if changed.is_empty() {
            "no chroot cached for these inputs".to_owned()
        } else {
            format!("changed since the last cached chroot: {}", changed.join(", "))
        }
    }

    /// Cache entries, newest first.
    fn entries(&self) -> Vec<PathBuf> {
        let mut entries: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        entries.sort_by_key(|(used, _)| std::cmp::Reverse(*used));
        entries.into_iter().map(|(_, p)| p).collect()
    }

    /// Keeps a copy of `build_dir`'s chroot, as the packages script left it, for `key`. Copied
    /// into a hidden directory and renamed, so an interrupted save leaves no entry; then the
    /// oldest entries beyond [`KEEP`] are removed.
    pub fn save(&self, key: &PackagesKey, build_dir: &Path) -> Result<()> {
        let entry = self.entry(key);
        let _lock = lock::cache_entry(&entry)?;
        let partial = self.dir.join(format!(".partial-{}-{}", key.entry_name(), std::process::id()));
        fsx::remove_if_present(&partial)?;
        fs::create_dir_all(partial.join("stages"))?;
        copy_tree_exact(&build_dir.join("chroot"), &partial.join("chroot"))?;
        for stage in fs::read_dir(build_dir.join(".build"))? {
            let stage = stage?;
            fs::copy(stage.path(), partial.join("stages").join(stage.file_name()))?;
        }
        for file in FILES {
            fs::copy(build_dir.join(file), partial.join(file)).with_context(|| format!("saving {file}"))?;
        }
        let inputs: String = key.parts.iter().map(|(name, digest)| format!("{digest} {name}\n")).collect();
        fs::write(partial.join("inputs"), inputs)?;
        fsx::remove_if_present(&entry)?;
        fs::rename(&partial, &entry).with_context(|| format!("moving the saved chroot to {}", entry.display()))?;
        for old in self.entries().into_iter().skip(KEEP) {
            let _old_lock = lock::cache_entry(&old)?;
            fsx::remove_if_present(&old)?;
        }
        Ok(())
    }
}

fn read_inputs(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(digest, name)| (name.to_owned(), digest.to_owned()))
        .collect())
}

/// A root file system copied as it is: owners, modes, device nodes, hard links, extended
/// attributes (file capabilities), timestamps. GNU `cp -a` does all of that.
fn copy_tree_exact(src: &Path, dest: &Path) -> Result<()> {
    if dest.symlink_metadata().is_ok() {
        bail!("{} already exists", dest.display());
    }
    if !fsx::mounts_under(src)?.is_empty() {
        bail!("{} has mounts below it; refusing to copy it", src.display());
    }
    Cmd::new("cp").arg("-a").arg("--").arg(src).arg(dest).run()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A build directory as the lb build stage prepares it: rendered config and .debs.
    fn tree(dir: &Path) {
        for (path, text) in [
            ("auto/config", "lb config noauto --distribution trixie\n"),
            ("config/package-lists/appliance.list.chroot", "postgresql\n"),
            ("config/packages.chroot/linux-image-6.12-truthdb_1_amd64.deb", "kernel deb"),
            ("config/includes.chroot/etc/os-release", "NAME=TruthDB OS\n"),
            ("config/includes.chroot/usr/bin/truthdb-installer", "binary"),
            ("config/hooks/normal/0100-identity.hook.chroot", "#!/bin/sh\n"),
            ("config/bootloaders/isolinux/isolinux.cfg", "menu\n"),
            ("config/archives/extra.list.chroot", "deb http://example/ trixie main\n"),
        ] {
            let path = dir.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
    }

    fn key(dir: &Path) -> PackagesKey {
        PackagesKey::of(dir, "trixie-amd64-root").unwrap()
    }

    #[test]
    fn package_inputs_change_the_key_and_name_themselves() {
        for (path, what) in [
            ("auto/config", "auto/"),
            ("config/package-lists/appliance.list.chroot", "config/package-lists"),
            ("config/packages.chroot/linux-image-6.12-truthdb_1_amd64.deb", "config/packages.chroot"),
            ("config/archives/extra.list.chroot", "config/archives"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            tree(dir.path());
            let before = key(dir.path());
            fs::write(dir.path().join(path), "changed").unwrap();
            let after = key(dir.path());
            assert_ne!(before.hex, after.hex, "changing {path} kept the key");
            assert_eq!(after.changed_since(&before.parts), [what.to_owned()], "{path}");
        }
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        assert_ne!(key(dir.path()).hex, PackagesKey::of(dir.path(), "another-root").unwrap().hex);
        // A new kind of config tree (say config/preseed/) is in the key without being named here.
        let before = key(dir.path());
        fs::create_dir_all(dir.path().join("config/preseed")).unwrap();
        fs::write(dir.path().join("config/preseed/a.cfg.chroot"), "d-i x").unwrap();
        assert_eq!(key(dir.path()).changed_since(&before.parts), ["config/preseed".to_owned()]);
    }

    #[test]
    fn binary_only_options_keep_the_key_and_others_do_not() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        // The header comment names the version, as the rendered one does.
        let config = |lines: &str| {
            let version = if lines.contains("0.2.0") { "0.2.0" } else { "0.1.0" };
            let script = format!("#!/bin/sh\n# TruthDB OS {version}\nlb config noauto \\\n{lines}\t\"${{@}}\"\n");
            fs::write(dir.path().join("auto/config"), script).unwrap();
            key(dir.path())
        };
        let base = config(
            "\t--distribution trixie \\\n\t--image-name truthdb-os-0.1.0 \\\n\t--iso-volume 'TruthDB 0.1.0' \\\n\t--bootappend-live 'boot=live quiet' \\\n",
        );
        let new_version = config(
            "\t--distribution trixie \\\n\t--image-name truthdb-os-0.2.0 \\\n\t--iso-volume 'TruthDB 0.2.0' \\\n\t--bootappend-live 'boot=live quiet' \\\n",
        );
        let new_params = config(
            "\t--distribution trixie \\\n\t--image-name truthdb-os-0.1.0 \\\n\t--iso-volume 'TruthDB 0.1.0' \\\n\t--bootappend-live 'boot=live' \\\n",
        );
        assert_eq!(base, new_version);
        assert_eq!(base, new_params);
        let new_suite = config(
            "\t--distribution forky \\\n\t--image-name truthdb-os-0.1.0 \\\n\t--iso-volume 'TruthDB 0.1.0' \\\n\t--bootappend-live 'boot=live quiet' \\\n",
        );
        assert_ne!(base, new_suite);
    }

    #[test]
    fn files_applied_after_the_packages_keep_the_key() {
        for path in [
            "config/includes.chroot/etc/os-release",
            "config/includes.chroot/usr/bin/truthdb-installer",
            "config/hooks/normal/0100-identity.hook.chroot",
            "config/bootloaders/isolinux/isolinux.cfg",
        ] {
            let dir = tempfile::tempdir().unwrap();
            tree(dir.path());
            let before = key(dir.path());
            fs::write(dir.path().join(path), "changed").unwrap();
            assert_eq!(before, key(dir.path()), "changing {path} changed the key");
        }
    }

    #[test]
    fn the_split_scripts_run_lb_chroots_helpers_in_its_order() {
        // live-build 1:20250505's `lb chroot`, less chroot_cache restore/save (no-ops without
        // --cache-stages chroot, which we do not set).
        let lb_chroot = [
            "chroot_prep install all mode-archives-chroot",
            "chroot_linux-image",
            "chroot_firmware",
            "chroot_preseed",
            "chroot_includes_before_packages",
            "chroot_package-lists \"$pass\"",
            "chroot_install-packages \"$pass\"",
            "chroot_includes_after_packages",
            "chroot_hooks",
            "chroot_hacks",
            "chroot_interactive",
            "chroot_prep remove all mode-archives-chroot",
        ];
        // The split adds exactly one unmount of the mounts and one mount again.
        let split = ["chroot_prep remove \"devpts proc selinuxfs sysfs tmpfs\"", lb_chroot[0]];
        let scripts = format!("{PACKAGES_SCRIPT}{CUSTOMISE_SCRIPT}");
        let mut helpers: Vec<&str> =
            scripts.lines().filter_map(|l| l.trim().strip_prefix("lb ")).filter(|h| h.starts_with("chroot_")).collect();
        let at = helpers.iter().position(|h| *h == split[0]).expect("the packages script unmounts");
        assert_eq!(helpers.drain(at..at + 2).collect::<Vec<_>>(), split);
        assert_eq!(helpers, lb_chroot);
        assert!(PACKAGES_SCRIPT.starts_with("set -e\ndate +%s.%N > .build/truthdb-packages-started\nlb bootstrap\n"));
        assert!(CUSTOMISE_SCRIPT.ends_with("\tlb installer\nfi\nlb binary\nlb source\n"));
    }

    #[test]
    fn the_times_the_packages_script_made_become_source_date_epoch() {
        // The customisation script's first command, run as it runs in the build directory: a
        // file from a package (older than the start) keeps its time; what the build made, a
        // file, a directory and a symlink (itself, not its target), gets SOURCE_DATE_EPOCH.
        let build = tempfile::tempdir().unwrap();
        let dir = build.path();
        fs::create_dir_all(dir.join(".build")).unwrap();
        fs::create_dir_all(dir.join("chroot/usr/share/doc/pkg")).unwrap();
        fs::create_dir_all(dir.join("chroot/etc/made")).unwrap();
        let packaged = dir.join("chroot/usr/share/doc/pkg/copyright");
        fs::write(&packaged, "packaged").unwrap();
        fs::write(dir.join("chroot/etc/made/by-the-build"), "made").unwrap();
        std::os::unix::fs::symlink("/nowhere", dir.join("chroot/etc/made/link")).unwrap();
        let at = |secs: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        for old in [&packaged, &dir.join("chroot/usr/share/doc/pkg")] {
            fs::File::open(old).unwrap().set_modified(at(1_600_000_000)).unwrap();
        }
        fs::write(dir.join(".build/truthdb-packages-started"), "1700000000.5\n").unwrap();
        let clamp = CUSTOMISE_SCRIPT.lines().find(|l| l.starts_with("find chroot")).unwrap();
        Cmd::new("sh").args(["-c", clamp]).dir(dir).env("SOURCE_DATE_EPOCH", "1650000000").run().unwrap();
        let mtime = |path: &Path| fs::symlink_metadata(path).unwrap().modified().unwrap();
        assert_eq!(mtime(&packaged), at(1_600_000_000));
        for made in ["chroot/etc/made/by-the-build", "chroot/etc/made", "chroot/etc/made/link", "chroot/etc"] {
            assert_eq!(mtime(&dir.join(made)), at(1_650_000_000), "{made}");
        }
    }

    #[test]
    fn a_saved_chroot_is_restored_exactly_and_a_miss_says_what_changed() {
        let cache = tempfile::tempdir().unwrap();
        let build = tempfile::tempdir().unwrap();
        tree(build.path());
        fs::create_dir_all(build.path().join("chroot/usr/bin")).unwrap();
        fs::write(build.path().join("chroot/usr/bin/psql"), "psql").unwrap();
        std::os::unix::fs::symlink("psql", build.path().join("chroot/usr/bin/pg")).unwrap();
        fs::create_dir_all(build.path().join(".build")).unwrap();
        fs::write(build.path().join(".build/chroot_install-packages.live"), "").unwrap();
        fs::write(build.path().join("chroot.packages.install"), "postgresql\t17\n").unwrap();
        let cached = ChrootCache::new(cache.path());
        let key = key(build.path());
        let Restored::Miss(why) = cached.restore(&key, build.path(), &|_| Ok(None)).unwrap() else {
            panic!("hit in an empty cache")
        };
        assert_eq!(why, "no chroot cached yet");
        cached.save(&key, build.path()).unwrap();

        let fresh = tempfile::tempdir().unwrap();
        tree(fresh.path());
        fs::create_dir_all(fresh.path().join(".build")).unwrap();
        fs::write(fresh.path().join(".build/config"), "new").unwrap();
        assert!(matches!(cached.restore(&key, fresh.path(), &|_| Ok(None)).unwrap(), Restored::Hit));
        assert_eq!(fs::read_to_string(fresh.path().join("chroot/usr/bin/psql")).unwrap(), "psql");
        assert_eq!(fs::read_link(fresh.path().join("chroot/usr/bin/pg")).unwrap(), Path::new("psql"));
        assert!(fresh.path().join(".build/chroot_install-packages.live").is_file());
        assert_eq!(fs::read_to_string(fresh.path().join(".build/config")).unwrap(), "new");
        assert!(fresh.path().join("chroot.packages.install").is_file());
        let refused = cached
            .restore(&key, tempfile::tempdir().unwrap().path(), &|chroot| {
                Ok(chroot.join("usr/bin/psql").is_file().then(|| "not the lock's packages".to_owned()))
            })
            .unwrap();
        assert!(matches!(refused, Restored::Miss(why) if why == "not the lock's packages"));

        fs::write(fresh.path().join("config/package-lists/appliance.list.chroot"), "mariadb-server\n").unwrap();
        let other = PackagesKey::of(fresh.path(), "trixie-amd64-root").unwrap();
        let Restored::Miss(why) = cached.restore(&other, tempfile::tempdir().unwrap().path(), &|_| Ok(None)).unwrap()
        else {
            panic!("a changed package list hit the cache")
        };
        assert_eq!(why, "changed since the last cached chroot: config/package-lists");
    }
}
