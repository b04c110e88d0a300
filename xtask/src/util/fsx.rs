//! File-system helpers shared by stages: tree copies that keep modes and symlinks, removal
//! that refuses to walk into a mount, atomic file writes.
//!
//! This is also the one place that knows Unix permission bits, symlinks and owners
//! ([`mode`], [`set_mode`]): the pipeline runs on Linux only (elsewhere xtask starts it in the
//! builder container), but xtask itself compiles for macOS and Windows hosts too, where these
//! helpers say what a Unix tree would have and refuse what only Unix can do.

use std::fs;
#[cfg(unix)]
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

/// The permission bits (`0o7777`) of a file or directory.
#[cfg(unix)]
pub fn mode(meta: &fs::Metadata) -> u32 {
    meta.permissions().mode() & 0o7777
}

/// Not a Unix host: what a Unix tree made from these files would have.
#[cfg(not(unix))]
pub fn mode(meta: &fs::Metadata) -> u32 {
    match (meta.is_dir(), meta.permissions().readonly()) {
        (true, _) => 0o755,
        (false, true) => 0o444,
        (false, false) => 0o644,
    }
}

/// Sets the permission bits of `path`.
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    #[cfg(unix)]
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))?;
    #[cfg(not(unix))]
    let _ = (path, mode); // no permission bits to set
    Ok(())
}

use anyhow::{Context, Result, bail};

/// Copies the tree `src` into `dest` keeping permission bits and symlinks (targets verbatim: an
/// absolute link in an overlay points into the image, not the host). Existing entries in
/// `dest` are an error naming the file, so two sources never silently overwrite each other.
/// `skip` names top-level entries of `src` not to copy.
pub fn copy_tree(src: &Path, dest: &Path, skip: &[&str]) -> Result<()> {
    let walker = walkdir::WalkDir::new(src).follow_links(false).sort_by_file_name().into_iter();
    for entry in walker.filter_entry(|e| e.depth() != 1 || !skip.iter().any(|s| e.file_name() == *s)) {
        let entry = entry.with_context(|| format!("walking {}", src.display()))?;
        let rel = entry.path().strip_prefix(src).expect("walkdir stays under its root");
        let target = dest.join(rel);
        refuse_symlinks_on_path(dest, &target)?;
        if entry.file_type().is_dir() {
            fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
            set_mode(&target, mode(&entry.metadata()?))?;
            chown_root(&target)?;
        } else {
            if target.symlink_metadata().is_ok() {
                bail!("{} would overwrite {}", entry.path().display(), target.display());
            }
            copy_entry(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Refuses to write `path` (inside the tree `root`) when it, or a directory on the way to it
/// below `root`, is a symlink. Trees are copied with symlinks kept as symlinks, so an overlay entry
/// such as `usr -> /somewhere` is a link in the image; writing `usr/lib/x` through it would
/// instead follow it and, as root, write on the host.
pub fn refuse_symlinks_on_path(root: &Path, path: &Path) -> Result<()> {
    let Ok(rel) = path.strip_prefix(root) else {
        bail!("{} is not inside {}", path.display(), root.display());
    };
    let mut at = root.to_owned();
    for component in rel.components() {
        at.push(component);
        if let Ok(meta) = at.symlink_metadata()
            && meta.file_type().is_symlink()
        {
            let link = fs::read_link(&at).unwrap_or_default();
            bail!(
                "{} is a symlink (to {}), and {} would be written through it: \
                 make it a directory, or put the files where it points inside the tree",
                at.display(),
                link.display(),
                rel.display()
            );
        }
    }
    Ok(())
}

/// Writes `contents` to `root/rel`, creating directories, never through a symlink.
pub fn write_in_tree(root: &Path, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> Result<std::path::PathBuf> {
    let path = root.join(rel);
    refuse_symlinks_on_path(root, &path)?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Writes `contents` to `path` by way of a temporary file beside it, renamed over `path`: a
/// reader never sees half a file, and an interrupted write leaves the old one.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let partial = path.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    fs::write(&partial, contents).with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, path).with_context(|| format!("renaming {} to {}", partial.display(), path.display()))
}

/// Whether a process with this PID exists: leftovers named after the run that made them
/// (partial build roots, GnuPG homes) are removed only when that run is gone.
pub fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Copies one file or symlink, keeping the permission bits.
pub fn copy_entry(src: &Path, dest: &Path) -> Result<()> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let meta = src.symlink_metadata().with_context(|| format!("reading {}", src.display()))?;
    if meta.file_type().is_symlink() {
        let target = fs::read_link(src).with_context(|| format!("reading symlink {}", src.display()))?;
        #[cfg(unix)]
        symlink(&target, dest).with_context(|| format!("creating symlink {}", dest.display()))?;
        #[cfg(not(unix))]
        bail!("{} is a symlink, which only a Unix host can copy as one ({})", src.display(), target.display());
    } else if meta.is_file() {
        fs::copy(src, dest).with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
    } else {
        bail!("{} is neither a file, a directory nor a symlink", src.display());
    }
    chown_root(dest)
}

/// live-build copies `includes.chroot` with `cp -a`: a file owned by the developer's uid would
/// keep that uid inside the image. As root we give everything we copy to root:root.
pub fn chown_root(path: &Path) -> Result<()> {
    #[cfg(unix)]
    if crate::util::host::is_root() {
        std::os::unix::fs::lchown(path, Some(0), Some(0)).with_context(|| format!("chown root {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = path; // no owners to set
    Ok(())
}

/// Removes a file or tree if it exists. Refuses a tree with anything mounted below it: walking
/// into a leaked bind mount of /dev or /proc would delete the host's files.
pub fn remove_if_present(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let mounts = mounts_under(path)?;
            if !mounts.is_empty() {
                bail!("refusing to delete {}: still mounted there: {}", path.display(), mounts.join(", "));
            }
            fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))
        }
        Ok(_) => fs::remove_file(path).with_context(|| format!("removing {}", path.display())),
        Err(_) => Ok(()),
    }
}

/// Mount points at or below `dir`, as this process's mount namespace sees them.
pub fn mounts_under(dir: &Path) -> Result<Vec<String>> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|point| Path::new(point).starts_with(&dir))
        .collect())
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(field: &str) -> String {
    field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// Cache hygiene: marks the cache entry `entry` (a directory) as used now, and removes its
/// sibling entries that were last used longer than `max_age` ago (hidden ones, such as partial
/// builds, are left to their owners). Returns what was removed.
pub fn touch_and_prune(entry: &Path, max_age: std::time::Duration) -> Result<Vec<std::path::PathBuf>> {
    let now = std::time::SystemTime::now();
    fs::File::open(entry)
        .and_then(|dir| dir.set_modified(now))
        .with_context(|| format!("marking {} as used", entry.display()))?;
    let Some(parent) = entry.parent() else { return Ok(Vec::new()) };
    let mut removed = Vec::new();
    for sibling in fs::read_dir(parent)?.flatten() {
        let path = sibling.path();
        let hidden = sibling.file_name().to_string_lossy().starts_with('.');
        let last_used = sibling.metadata().and_then(|m| m.modified()).ok();
        let stale = last_used.and_then(|t| now.duration_since(t).ok()).is_some_and(|age| age > max_age);
        if path != entry && !hidden && stale && remove_if_present(&path).is_ok() {
            removed.push(path);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_tree_keeps_modes_and_symlinks_and_refuses_collisions() {
        let src = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        fs::create_dir(src.path().join("bin")).unwrap();
        fs::write(src.path().join("bin/tool"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(src.path().join("bin/tool"), fs::Permissions::from_mode(0o750)).unwrap();
        symlink("/dev/null", src.path().join("masked.service")).unwrap();
        fs::write(src.path().join("README.md"), "not copied").unwrap();

        copy_tree(src.path(), dest.path(), &["README.md"]).unwrap();
        let mode = fs::metadata(dest.path().join("bin/tool")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o750);
        assert_eq!(fs::read_link(dest.path().join("masked.service")).unwrap(), Path::new("/dev/null"));
        assert!(!dest.path().join("README.md").exists());

        let msg = format!("{:#}", copy_tree(src.path(), dest.path(), &[]).unwrap_err());
        assert!(msg.contains("would overwrite"), "{msg}");
    }

    #[test]
    fn mount_points_are_found_under_a_directory() {
        assert!(mounts_under(Path::new("/")).unwrap().iter().any(|m| m == "/"));
        let empty = tempfile::tempdir().unwrap();
        assert!(mounts_under(empty.path()).unwrap().is_empty());
    }

    #[test]
    fn stale_cache_entries_are_pruned_and_the_used_one_kept() {
        let cache = tempfile::tempdir().unwrap();
        let (used, fresh, stale, partial) = (
            cache.path().join("a-used"),
            cache.path().join("b-fresh"),
            cache.path().join("c-stale"),
            cache.path().join(".partial-c"),
        );
        for dir in [&used, &fresh, &stale, &partial] {
            fs::create_dir_all(dir.join("etc")).unwrap();
        }
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(90 * 86400);
        for dir in [&used, &stale, &partial] {
            fs::File::open(dir).unwrap().set_modified(long_ago).unwrap();
        }
        let removed = touch_and_prune(&used, std::time::Duration::from_secs(30 * 86400)).unwrap();
        assert_eq!(removed, std::slice::from_ref(&stale));
        assert!(used.exists() && fresh.exists() && partial.exists() && !stale.exists());
    }
}
