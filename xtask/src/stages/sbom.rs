//! Stage "sbom": what is in the image, in the formats supply-chain tools read, and how it was
//! made.
//!
//! ```text
//! <stem>.spdx.json     SPDX 2.3: the image, every Debian package in it, the installer and its crates
//! <stem>.cdx.json      CycloneDX 1.5: the same components
//! <stem>.intoto.jsonl  an in-toto statement with a SLSA v1 provenance predicate for the ISO
//! ```
//!
//! The packages are those of live-build's `.packages` list, which it writes from the chroot
//! just after the squashfs is made; their details (architecture, source package) come from
//! the finished chroot's `var/lib/dpkg/status`. The chroot alone would say too much: the
//! binary stage installs the boot loaders' packages into it after the squashfs is taken, and
//! purging them leaves their dependencies behind (`libfribidi0` and `shared-mime-info` were
//! in the chroot's database but not in the image). A package's
//! sha256 is its `.deb`'s: from the apt indices the chroot was installed from, or for the
//! local packages (our kernel, the payload's debs) from the files themselves. Licences come
//! from the machine-readable `copyright` files (DEP-5) the packages ship; a package without
//! one says NOASSERTION rather than a guess. The installer's crates are those `cargo tree`
//! says are linked into it (normal dependencies only), with Cargo.lock's checksums.
//!
//! Every document is a function of the build's inputs alone: no clock, host name or path,
//! timestamps from SOURCE_DATE_EPOCH, identifiers from the inputs digest, everything sorted.
//! Two builds of one commit therefore write the same bytes (`repro-check` compares them).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::util::deb822::{field, paragraphs};
use crate::util::digest::Hasher;
use crate::util::run::Cmd;

/// One Debian package installed in the image.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DebPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub source: String,
    pub source_version: String,
    /// sha256 of the .deb it was installed from, when known.
    pub sha256: Option<String>,
    /// An SPDX licence expression made from the package's DEP-5 `copyright`, when it has one.
    pub license: Option<String>,
    /// Extra facts for this package (the kernel's source pin and config digest).
    pub notes: Vec<(String, String)>,
}

/// One crate linked into the installer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Crate {
    pub name: String,
    pub version: String,
    /// Cargo.lock's checksum (the sha256 of the .crate file), for registry crates.
    pub sha256: Option<String>,
}

/// The facts about the build that the documents name.
pub struct BuildFacts<'a> {
    /// `<name>-<version>-<arch>`.
    pub stem: &'a str,
    pub name: &'a str,
    pub version: &'a str,
    pub suite: &'a str,
    pub architecture: &'a str,
    pub source_date_epoch: u64,
    pub inputs_digest: &'a str,
    /// The ISO as published and its sha256 (the provenance statement's subject).
    pub iso_name: &'a str,
    pub iso_sha256: &'a str,
    /// The git commit the image was built from, and whether the work tree had changes.
    pub commit: Option<&'a str>,
    pub dirty: bool,
    /// The project's repository URL (the workspace's `repository`), if it names one.
    pub repository: Option<&'a str>,
    /// sha256 of the installed-packages list (`.packages`).
    pub packages_sha256: &'a str,
    pub payload: &'a str,
    pub compression: &'a str,
    pub kernel_key: &'a str,
    pub build_root_key: &'a str,
    pub packages_key: &'a str,
    /// sha256 of the package lock the image was built from (or recorded), if any.
    pub package_lock_sha256: Option<&'a str>,
}

/// Everything the image holds that the documents list.
pub struct ImageContents {
    pub debs: Vec<DebPackage>,
    pub installer_version: String,
    pub crates: Vec<Crate>,
}

/// The three files written, by role.
pub struct SbomFiles {
    pub spdx: PathBuf,
    pub cyclonedx: PathBuf,
    pub provenance: PathBuf,
}

impl SbomFiles {
    pub fn all(&self) -> [&Path; 3] {
        [&self.spdx, &self.cyclonedx, &self.provenance]
    }
}

/// The published names of the SBOM and provenance files of `stem`.
pub fn file_names(stem: &str) -> [String; 3] {
    [format!("{stem}.spdx.json"), format!("{stem}.cdx.json"), format!("{stem}.intoto.jsonl")]
}

/// Writes the SPDX, CycloneDX and provenance documents into `dir`.
pub fn write(dir: &Path, facts: &BuildFacts, contents: &ImageContents) -> Result<SbomFiles> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let [spdx_name, cdx_name, provenance_name] = file_names(facts.stem);
    let files =
        SbomFiles { spdx: dir.join(spdx_name), cyclonedx: dir.join(cdx_name), provenance: dir.join(provenance_name) };
    let spdx = pretty(&spdx(facts, contents))?;
    let cdx = pretty(&cyclonedx(facts, contents))?;
    fs::write(&files.spdx, &spdx).with_context(|| format!("writing {}", files.spdx.display()))?;
    fs::write(&files.cyclonedx, &cdx).with_context(|| format!("writing {}", files.cyclonedx.display()))?;
    let byproducts = [(&files.spdx, spdx.as_bytes()), (&files.cyclonedx, cdx.as_bytes())];
    let byproducts: Vec<(String, String)> =
        byproducts.iter().map(|(path, bytes)| (file_name(path), sha256_hex(bytes))).collect();
    let mut line = serde_json::to_string(&provenance(facts, &byproducts))?;
    line.push('\n');
    fs::write(&files.provenance, line).with_context(|| format!("writing {}", files.provenance.display()))?;
    Ok(files)
}

fn pretty(value: &Value) -> Result<String> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    Ok(text)
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

// --- reading the image -----------------------------------------------------------------------

/// The packages dpkg has installed in the chroot at `chroot`, with their .deb's sha256 from the
/// apt indices in the chroot or from `local_debs`, and their licences.
/// The image's packages: each line `name[:arch]<TAB>version` of `manifest` (live-build's
/// `.packages`, read from `manifest_path`), as the chroot's dpkg database describes it.
pub fn read_image(
    chroot: &Path,
    manifest_path: &Path,
    manifest: &str,
    local_debs: &[LocalDeb],
) -> Result<Vec<DebPackage>> {
    let mut listed = BTreeSet::new();
    for (number, line) in manifest.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let Some((name, version)) = line.split_once('\t') else {
            bail!("{} line {}: {line:?} is not `package<TAB>version`", manifest_path.display(), number + 1);
        };
        let name = name.split(':').next().unwrap_or(name);
        listed.insert((name.to_owned(), version.trim().to_owned()));
    }
    let status_path = chroot.join("var/lib/dpkg/status");
    let status =
        fs::read_to_string(&status_path).with_context(|| format!("reading the image's {}", status_path.display()))?;
    let mut sums = apt_index_sums(&chroot.join("var/lib/apt/lists"))?;
    for deb in local_debs {
        sums.insert((deb.name.clone(), deb.version.clone(), deb.architecture.clone()), deb.sha256.clone());
    }
    let mut debs = Vec::new();
    for paragraph in paragraphs(&status) {
        let installed = field(&paragraph, "Status").is_some_and(|s| s.ends_with(" installed"));
        let (Some(name), Some(version), Some(architecture)) =
            (field(&paragraph, "Package"), field(&paragraph, "Version"), field(&paragraph, "Architecture"))
        else {
            continue;
        };
        if !installed || !listed.remove(&(name.to_owned(), version.to_owned())) {
            continue;
        }
        let (source, source_version) = match field(&paragraph, "Source") {
            None => (name.to_owned(), version.to_owned()),
            Some(source) => match source.split_once(' ') {
                Some((source, rest)) => {
                    (source.to_owned(), rest.trim().trim_start_matches('(').trim_end_matches(')').to_owned())
                }
                None => (source.to_owned(), version.to_owned()),
            },
        };
        let key = (name.to_owned(), version.to_owned(), architecture.to_owned());
        let copyright = chroot.join("usr/share/doc").join(name).join("copyright");
        let license = fs::read_to_string(&copyright).ok().and_then(|text| license_of_copyright(&text));
        debs.push(DebPackage {
            name: name.to_owned(),
            version: version.to_owned(),
            architecture: architecture.to_owned(),
            source,
            source_version,
            sha256: sums.get(&key).cloned(),
            license,
            notes: Vec::new(),
        });
    }
    if let Some((name, version)) = listed.first() {
        bail!(
            "{} lists {name} {version}, which {} does not have installed ({} such packages)",
            manifest_path.display(),
            status_path.display(),
            listed.len()
        );
    }
    if debs.is_empty() {
        bail!("{} lists no installed package", manifest_path.display());
    }
    debs.sort();
    Ok(debs)
}

type DebKey = (String, String, String);

/// (package, version, architecture) -> sha256 from every `*_Packages` index apt keeps.
fn apt_index_sums(lists: &Path) -> Result<BTreeMap<DebKey, String>> {
    let mut sums = BTreeMap::new();
    let Ok(entries) = fs::read_dir(lists) else {
        return Ok(sums);
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().ends_with("_Packages")))
        .collect();
    files.sort();
    for file in files {
        let text = fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        for paragraph in paragraphs(&text) {
            if let (Some(name), Some(version), Some(arch), Some(sha256)) = (
                field(&paragraph, "Package"),
                field(&paragraph, "Version"),
                field(&paragraph, "Architecture"),
                field(&paragraph, "SHA256"),
            ) {
                sums.insert((name.to_owned(), version.to_owned(), arch.to_owned()), sha256.to_owned());
            }
        }
    }
    Ok(sums)
}

/// A .deb the pipeline itself put into the image (our kernel, the payload's own packages).
#[derive(Clone, Debug)]
pub struct LocalDeb {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub sha256: String,
}

impl LocalDeb {
    /// Reads a .deb's control fields with `dpkg-deb` and hashes the file.
    pub fn read(path: &Path) -> Result<LocalDeb> {
        let fields = Cmd::new("dpkg-deb")
            .arg("--field")
            .arg(path)
            .args(["Package", "Version", "Architecture"])
            .read()
            .with_context(|| format!("reading the control fields of {}", path.display()))?;
        let paragraph = paragraphs(&fields).into_iter().next().unwrap_or_default();
        let get = |name: &str| {
            field(&paragraph, name)
                .map(str::to_owned)
                .with_context(|| format!("{} has no {name} field", path.display()))
        };
        Ok(LocalDeb {
            name: get("Package")?,
            version: get("Version")?,
            architecture: get("Architecture")?,
            sha256: crate::stages::checksums::sha256_file(path)?,
        })
    }
}

// --- licences ----------------------------------------------------------------------------------

/// Debian's short licence names (DEP-5) and the SPDX identifiers they stand for.
const DEBIAN_TO_SPDX: &[(&str, &str)] = &[
    ("agpl-3", "AGPL-3.0-only"),
    ("agpl-3+", "AGPL-3.0-or-later"),
    ("apache-2", "Apache-2.0"),
    ("apache-2.0", "Apache-2.0"),
    ("artistic", "Artistic-1.0-Perl"),
    ("artistic-1.0", "Artistic-1.0"),
    ("artistic-2.0", "Artistic-2.0"),
    ("bsd-2-clause", "BSD-2-Clause"),
    ("bsd-3-clause", "BSD-3-Clause"),
    ("bsd-4-clause", "BSD-4-Clause"),
    ("bsl-1.0", "BSL-1.0"),
    ("cc0", "CC0-1.0"),
    ("cc0-1.0", "CC0-1.0"),
    ("curl", "curl"),
    ("expat", "MIT"),
    ("fsfap", "FSFAP"),
    ("fsful", "FSFUL"),
    ("fsfullr", "FSFULLR"),
    ("gfdl-1.2", "GFDL-1.2-only"),
    ("gfdl-1.2+", "GFDL-1.2-or-later"),
    ("gfdl-1.3", "GFDL-1.3-only"),
    ("gfdl-1.3+", "GFDL-1.3-or-later"),
    ("gpl", "GPL-1.0-or-later"),
    ("gpl-1", "GPL-1.0-only"),
    ("gpl-1+", "GPL-1.0-or-later"),
    ("gpl-2", "GPL-2.0-only"),
    ("gpl-2+", "GPL-2.0-or-later"),
    ("gpl-2.0", "GPL-2.0-only"),
    ("gpl-2.0+", "GPL-2.0-or-later"),
    ("gpl-2.0-only", "GPL-2.0-only"),
    ("gpl-2.0-or-later", "GPL-2.0-or-later"),
    ("gpl-3", "GPL-3.0-only"),
    ("gpl-3+", "GPL-3.0-or-later"),
    ("gpl-3.0", "GPL-3.0-only"),
    ("gpl-3.0+", "GPL-3.0-or-later"),
    ("gpl-3.0-only", "GPL-3.0-only"),
    ("gpl-3.0-or-later", "GPL-3.0-or-later"),
    ("isc", "ISC"),
    ("lgpl-2", "LGPL-2.0-only"),
    ("lgpl-2+", "LGPL-2.0-or-later"),
    ("lgpl-2.0", "LGPL-2.0-only"),
    ("lgpl-2.0+", "LGPL-2.0-or-later"),
    ("lgpl-2.1", "LGPL-2.1-only"),
    ("lgpl-2.1+", "LGPL-2.1-or-later"),
    ("lgpl-2.1-only", "LGPL-2.1-only"),
    ("lgpl-2.1-or-later", "LGPL-2.1-or-later"),
    ("lgpl-3", "LGPL-3.0-only"),
    ("lgpl-3+", "LGPL-3.0-or-later"),
    ("lgpl-3.0", "LGPL-3.0-only"),
    ("lgpl-3.0+", "LGPL-3.0-or-later"),
    ("mit", "MIT"),
    ("mit-0", "MIT-0"),
    ("mpl-1.1", "MPL-1.1"),
    ("mpl-2.0", "MPL-2.0"),
    ("openssl", "OpenSSL"),
    ("psf-2", "PSF-2.0"),
    ("python-2.0", "Python-2.0"),
    ("unicode-dfs-2016", "Unicode-DFS-2016"),
    ("x11", "X11"),
    ("zlib", "Zlib"),
];

/// One licence name as SPDX: a known identifier, or `LicenseRef-` with the name made safe.
pub fn spdx_license_id(debian_name: &str) -> String {
    let name = debian_name.trim();
    if let Some((_, id)) = DEBIAN_TO_SPDX.iter().find(|(d, _)| d.eq_ignore_ascii_case(name)) {
        return (*id).to_owned();
    }
    let safe: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect();
    format!("LicenseRef-{}", safe.trim_matches('-'))
}

/// A DEP-5 `License:` line ("GPL-2+ or Artistic, and BSD-3-clause") as an SPDX expression.
/// A comma or "and" joins with AND, "or" (or "|") with OR inside; a term with an exception
/// ("GPL-2+ with OpenSSL exception") becomes one LicenseRef, as no table covers them all.
pub fn spdx_expression(license_line: &str) -> Option<String> {
    let line = license_line.lines().next()?.trim();
    if line.is_empty() {
        return None;
    }
    let mut all = Vec::new();
    // "A, and B" and "A, B" both mean A AND B.
    let line = line.replace(',', " and ");
    for group in split_words(&line, &[" and ", " AND "]) {
        let terms: Vec<String> = split_words(&group, &[" or ", " OR ", "|"])
            .iter()
            .filter(|t| !t.is_empty())
            .map(|t| spdx_license_id(t))
            .collect();
        match terms.len() {
            0 => {}
            1 => all.push(terms[0].clone()),
            _ => all.push(format!("({})", terms.join(" OR "))),
        }
    }
    match all.len() {
        0 => None,
        // One group needs no parentheses around its alternatives.
        1 => Some(all[0].strip_prefix('(').and_then(|s| s.strip_suffix(')')).unwrap_or(&all[0]).to_owned()),
        _ => Some(all.join(" AND ")),
    }
}

fn split_words(text: &str, separators: &[&str]) -> Vec<String> {
    let mut parts = vec![text.to_owned()];
    for sep in separators {
        parts = parts.iter().flat_map(|p| p.split(sep).map(|s| s.trim().to_owned())).collect();
    }
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

/// The licence of a package from its `copyright` file, when that file is machine-readable
/// (DEP-5): every Files paragraph's licence, each once, joined with AND.
pub fn license_of_copyright(text: &str) -> Option<String> {
    let paragraphs = paragraphs(text);
    let header = paragraphs.first()?;
    if !field(header, "Format").is_some_and(|f| f.contains("copyright-format")) {
        return None;
    }
    let mut expressions = BTreeSet::new();
    for paragraph in paragraphs.iter().filter(|p| field(p, "Files").is_some()) {
        if let Some(expression) = field(paragraph, "License").and_then(spdx_expression) {
            expressions.insert(expression);
        }
    }
    match expressions.len() {
        0 => None,
        1 => expressions.into_iter().next(),
        _ => Some(
            expressions
                .into_iter()
                .map(|e| if e.contains(' ') && !e.starts_with('(') { format!("({e})") } else { e })
                .collect::<Vec<_>>()
                .join(" AND "),
        ),
    }
}

/// Every `LicenseRef-...` an expression uses.
fn license_refs(expression: &str) -> impl Iterator<Item = &str> {
    expression.split(|c: char| c.is_whitespace() || c == '(' || c == ')').filter(|w| w.starts_with("LicenseRef-"))
}

// --- the installer's crates ----------------------------------------------------------------------

/// The crates linked into the installer binaries (normal dependencies of both, for the
/// image's target), with Cargo.lock's checksums. Workspace members are not crates here.
pub fn installer_crates(workspace: &Path) -> Result<Vec<Crate>> {
    let tree = crate::stages::installer_build::host_cargo()
        .args(["tree", "--locked", "--edges", "normal", "--prefix", "none", "--format", "{p}"])
        .args([
            "--target",
            "x86_64-unknown-linux-gnu",
            "--package",
            "truthdb-installer",
            "--package",
            "truthdb-installer-gui",
        ])
        .dir(workspace)
        .read()
        .context("listing the installer's crates with cargo tree")?;
    let lock_path = workspace.join("Cargo.lock");
    let lock: toml::Value =
        toml::from_str(&fs::read_to_string(&lock_path).with_context(|| format!("reading {}", lock_path.display()))?)
            .with_context(|| format!("parsing {}", lock_path.display()))?;
    let mut checksums = BTreeMap::new();
    for package in lock.get("package").and_then(|p| p.as_array()).into_iter().flatten() {
        if let (Some(name), Some(version), Some(sum)) = (
            package.get("name").and_then(|v| v.as_str()),
            package.get("version").and_then(|v| v.as_str()),
            package.get("checksum").and_then(|v| v.as_str()),
        ) {
            checksums.insert((name.to_owned(), version.to_owned()), sum.to_owned());
        }
    }
    Ok(crates_of_tree(&tree, &checksums))
}

/// Parses `cargo tree --prefix none --format {p}` lines ("name v1.2.3", "(*)" repeats,
/// "(/path)" for workspace members, which are left out).
fn crates_of_tree(tree: &str, checksums: &BTreeMap<(String, String), String>) -> Vec<Crate> {
    let mut crates = BTreeSet::new();
    for line in tree.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(version)) = (words.next(), words.next()) else { continue };
        let Some(version) = version.strip_prefix('v') else { continue };
        // A workspace member is followed by its path: it is ours, not a crate we took in.
        if words.any(|w| w.starts_with("(/")) {
            continue;
        }
        let sha256 = checksums.get(&(name.to_owned(), version.to_owned())).cloned();
        crates.insert(Crate { name: name.to_owned(), version: version.to_owned(), sha256 });
    }
    crates.into_iter().collect()
}

// --- the documents ---------------------------------------------------------------------------------

fn timestamp(epoch: u64) -> String {
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Percent-encodes what a purl component may not hold as is.
fn purl_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn deb_purl(deb: &DebPackage, suite: &str) -> String {
    let mut purl = format!(
        "pkg:deb/debian/{}@{}?arch={}&distro=debian-{}",
        purl_encode(&deb.name),
        purl_encode(&deb.version),
        purl_encode(&deb.architecture),
        purl_encode(suite)
    );
    if deb.source != deb.name || deb.source_version != deb.version {
        purl.push_str(&format!("&upstream={}", purl_encode(&format!("{}@{}", deb.source, deb.source_version))));
    }
    purl
}

fn crate_purl(krate: &Crate) -> String {
    format!("pkg:cargo/{}@{}", purl_encode(&krate.name), purl_encode(&krate.version))
}

fn spdx_id(kind: &str, index: usize, name: &str) -> String {
    let safe: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect();
    format!("SPDXRef-{kind}-{index}-{safe}")
}

/// A UUID (version 4 layout) made from a digest, so that the same build has the same serial.
fn uuid_of(digest_hex: &str) -> String {
    let h: Vec<char> = digest_hex.chars().chain(std::iter::repeat('0')).take(32).collect();
    let mut h: String = h.into_iter().collect();
    h.replace_range(12..13, "4");
    let variant = u8::from_str_radix(&h[16..17], 16).unwrap_or(0) & 0x3 | 0x8;
    h.replace_range(16..17, &format!("{variant:x}"));
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn document_digest(facts: &BuildFacts) -> String {
    Hasher::new().field("inputs", facts.inputs_digest).field("iso", facts.iso_sha256).hex()
}

/// SPDX 2.3 JSON.
pub fn spdx(facts: &BuildFacts, contents: &ImageContents) -> Value {
    let image_id = "SPDXRef-image".to_owned();
    let installer_id = "SPDXRef-installer".to_owned();
    let mut packages = vec![json!({
        "SPDXID": image_id,
        "name": facts.name,
        "versionInfo": facts.version,
        "packageFileName": facts.iso_name,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "checksums": [{"algorithm": "SHA256", "checksumValue": facts.iso_sha256}],
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "comment": format!("Debian {} ({}) live image, built from inputs digest {}", facts.suite, facts.architecture, facts.inputs_digest),
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": image_id,
    })];
    let mut refs = BTreeSet::new();
    for (i, deb) in contents.debs.iter().enumerate() {
        let id = spdx_id("deb", i, &deb.name);
        let mut package = json!({
            "SPDXID": id,
            "name": deb.name,
            "versionInfo": deb.version,
            "supplier": "Organization: Debian",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "sourceInfo": format!("built package from: {} {}", deb.source, deb.source_version),
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": deb.license.clone().unwrap_or_else(|| "NOASSERTION".to_owned()),
            "copyrightText": "NOASSERTION",
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": deb_purl(deb, facts.suite)}],
        });
        if let Some(sha256) = &deb.sha256 {
            package["checksums"] = json!([{"algorithm": "SHA256", "checksumValue": sha256}]);
        }
        if !deb.notes.is_empty() {
            package["comment"] =
                json!(deb.notes.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("; "));
        }
        if let Some(license) = &deb.license {
            refs.extend(license_refs(license).map(str::to_owned));
        }
        packages.push(package);
        relationships
            .push(json!({"spdxElementId": image_id, "relationshipType": "CONTAINS", "relatedSpdxElement": id}));
    }
    packages.push(json!({
        "SPDXID": installer_id,
        "name": "truthdb-installer",
        "versionInfo": contents.installer_version,
        "supplier": "Organization: TruthDB",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "Apache-2.0",
        "copyrightText": "NOASSERTION",
        "comment": "/usr/bin/truthdb-installer and /usr/bin/truthdb-installer-gui, compiled by the pipeline",
    }));
    relationships
        .push(json!({"spdxElementId": image_id, "relationshipType": "CONTAINS", "relatedSpdxElement": installer_id}));
    for (i, krate) in contents.crates.iter().enumerate() {
        let id = spdx_id("crate", i, &krate.name);
        let mut package = json!({
            "SPDXID": id,
            "name": krate.name,
            "versionInfo": krate.version,
            "downloadLocation": format!("https://crates.io/api/v1/crates/{}/{}/download", krate.name, krate.version),
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": crate_purl(krate)}],
        });
        if let Some(sha256) = &krate.sha256 {
            package["checksums"] = json!([{"algorithm": "SHA256", "checksumValue": sha256}]);
        }
        packages.push(package);
        relationships
            .push(json!({"spdxElementId": installer_id, "relationshipType": "STATIC_LINK", "relatedSpdxElement": id}));
    }
    let extracted: Vec<Value> = refs
        .iter()
        .map(|id| {
            json!({
                "licenseId": id,
                "name": id.trim_start_matches("LicenseRef-"),
                "extractedText": format!("A licence Debian names {:?}: see the package's /usr/share/doc/<package>/copyright in the image.", id.trim_start_matches("LicenseRef-")),
            })
        })
        .collect();
    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": facts.stem,
        "documentNamespace": format!("https://spdx.truthdb-os.invalid/{}/{}", facts.stem, document_digest(facts)),
        "creationInfo": {
            "created": timestamp(facts.source_date_epoch),
            "creators": [format!("Tool: truthdb-os-xtask-{}", facts.version), "Organization: TruthDB".to_owned()],
        },
        "packages": packages,
        "relationships": relationships,
    });
    if !extracted.is_empty() {
        doc["hasExtractedLicensingInfos"] = json!(extracted);
    }
    doc
}

/// CycloneDX 1.5 JSON.
pub fn cyclonedx(facts: &BuildFacts, contents: &ImageContents) -> Value {
    let mut components = Vec::new();
    for deb in &contents.debs {
        let purl = deb_purl(deb, facts.suite);
        let mut component = json!({
            "type": "library",
            "bom-ref": purl,
            "name": deb.name,
            "version": deb.version,
            "supplier": {"name": "Debian"},
            "purl": purl,
            "properties": [
                {"name": "debian:architecture", "value": deb.architecture},
                {"name": "debian:source", "value": deb.source},
                {"name": "debian:source-version", "value": deb.source_version},
            ],
        });
        if let Some(sha256) = &deb.sha256 {
            component["hashes"] = json!([{"alg": "SHA-256", "content": sha256}]);
        }
        if let Some(license) = &deb.license {
            component["licenses"] = json!([{"expression": license}]);
        }
        for (name, value) in &deb.notes {
            component["properties"]
                .as_array_mut()
                .expect("an array")
                .push(json!({"name": format!("truthdb-os:{name}"), "value": value}));
        }
        components.push(component);
    }
    let crate_refs: Vec<String> = contents.crates.iter().map(crate_purl).collect();
    let installer_ref = format!("pkg:generic/truthdb-installer@{}", purl_encode(&contents.installer_version));
    components.push(json!({
        "type": "application",
        "bom-ref": installer_ref,
        "name": "truthdb-installer",
        "version": contents.installer_version,
        "licenses": [{"expression": "Apache-2.0"}],
        "purl": installer_ref,
        "description": "/usr/bin/truthdb-installer and /usr/bin/truthdb-installer-gui, compiled by the pipeline",
    }));
    for (krate, purl) in contents.crates.iter().zip(&crate_refs) {
        let mut component = json!({
            "type": "library",
            "bom-ref": purl,
            "name": krate.name,
            "version": krate.version,
            "purl": purl,
        });
        if let Some(sha256) = &krate.sha256 {
            component["hashes"] = json!([{"alg": "SHA-256", "content": sha256}]);
        }
        components.push(component);
    }
    let image_ref = format!("pkg:generic/{}@{}", purl_encode(facts.name), purl_encode(facts.version));
    let mut contained: Vec<String> = contents.debs.iter().map(|d| deb_purl(d, facts.suite)).collect();
    contained.push(installer_ref.clone());
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": format!("urn:uuid:{}", uuid_of(&document_digest(facts))),
        "version": 1,
        "metadata": {
            "timestamp": timestamp(facts.source_date_epoch),
            "tools": {"components": [{"type": "application", "name": "truthdb-os-xtask", "version": facts.version}]},
            "component": {
                "type": "operating-system",
                "bom-ref": image_ref,
                "name": facts.name,
                "version": facts.version,
                "purl": image_ref,
                "hashes": [{"alg": "SHA-256", "content": facts.iso_sha256}],
                "description": format!("{}: Debian {} ({}) live image", facts.iso_name, facts.suite, facts.architecture),
            },
        },
        "components": components,
        "dependencies": [
            {"ref": image_ref, "dependsOn": contained},
            {"ref": installer_ref, "dependsOn": crate_refs},
        ],
    })
}

/// The project's build type for SLSA provenance: what the parameters below mean.
pub const BUILD_TYPE: &str = "https://truthdb-os.invalid/slsa/iso/v1";

/// An in-toto v1 statement with a SLSA v1 provenance predicate for the ISO. No time: the
/// statement is a function of the inputs, like the image.
pub fn provenance(facts: &BuildFacts, byproducts: &[(String, String)]) -> Value {
    let mut dependencies = Vec::new();
    if let Some(commit) = facts.commit {
        dependencies.push(match facts.repository {
            Some(repo) => json!({"uri": format!("git+{repo}@{commit}"), "digest": {"gitCommit": commit}}),
            None => json!({"name": "source", "digest": {"gitCommit": commit}}),
        });
    }
    dependencies.push(json!({
        "name": format!("{}.packages", facts.stem),
        "digest": {"sha256": facts.packages_sha256},
        "annotations": {"what": "the image's installed Debian packages (name and version), as published beside it"},
    }));
    if let Some(sha256) = facts.package_lock_sha256 {
        dependencies.push(json!({
            "name": "packages.lock",
            "digest": {"sha256": sha256},
            "annotations": {"what": "the package lock: every file fetched from apt repositories (signed indexes and .debs) by URL and sha256"},
        }));
    }
    json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": facts.iso_name, "digest": {"sha256": facts.iso_sha256}}],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "command": "cargo xtask iso",
                    "version": facts.version,
                    "payload": facts.payload,
                    "compression": facts.compression,
                    "workTreeChanges": facts.dirty,
                },
                "internalParameters": {
                    "SOURCE_DATE_EPOCH": facts.source_date_epoch,
                    "suite": facts.suite,
                    "architecture": facts.architecture,
                    "inputsDigest": facts.inputs_digest,
                    "kernelKey": facts.kernel_key,
                    "buildRootKey": facts.build_root_key,
                    "packagesKey": facts.packages_key,
                },
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {"id": format!("https://truthdb-os.invalid/xtask/{}", facts.version)},
                "byproducts": byproducts
                    .iter()
                    .map(|(name, sha256)| json!({"name": name, "digest": {"sha256": sha256}}))
                    .collect::<Vec<_>>(),
            },
        },
    })
}

/// The git commit of `root` and whether tracked files have changes; `None` outside git.
pub fn git_state(root: &Path) -> (Option<String>, bool) {
    let git = |args: &[&str]| Cmd::new("git").args(["-c", "safe.directory=*"]).args(args).dir(root).read();
    let Ok(commit) = git(&["rev-parse", "HEAD"]) else {
        return (None, false);
    };
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.trim().is_empty()).unwrap_or(false);
    (Some(commit.trim().to_owned()), dirty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_licence_lines_become_spdx_expressions() {
        assert_eq!(spdx_expression("GPL-2+").as_deref(), Some("GPL-2.0-or-later"));
        assert_eq!(spdx_expression("GPL-2+ or Artistic").as_deref(), Some("GPL-2.0-or-later OR Artistic-1.0-Perl"));
        assert_eq!(
            spdx_expression("GPL-2+ or Artistic, and BSD-3-clause").as_deref(),
            Some("(GPL-2.0-or-later OR Artistic-1.0-Perl) AND BSD-3-Clause")
        );
        assert_eq!(spdx_expression("Expat\n Permission is hereby granted").as_deref(), Some("MIT"));
        assert_eq!(
            spdx_expression("GPL-2+ with OpenSSL exception").as_deref(),
            Some("LicenseRef-GPL-2--with-OpenSSL-exception")
        );
        assert_eq!(spdx_expression("public-domain").as_deref(), Some("LicenseRef-public-domain"));
        assert_eq!(spdx_expression("  "), None);
    }

    #[test]
    fn a_machine_readable_copyright_gives_every_licence_once() {
        let text = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: x\n\n\
                    Files: *\nCopyright: 2020 A\nLicense: GPL-2+\n\nFiles: lib/*\nCopyright: B\nLicense: LGPL-2.1+ or MIT\n\n\
                    Files: debian/*\nLicense: GPL-2+\n\nLicense: GPL-2+\n This program is free software\n";
        assert_eq!(license_of_copyright(text).as_deref(), Some("GPL-2.0-or-later AND (LGPL-2.1-or-later OR MIT)"));
        assert_eq!(license_of_copyright("This is free software, see /usr/share/common-licenses/GPL-2\n"), None);
    }

    #[test]
    fn the_image_is_read_from_dpkg_status_with_sums_from_apt_and_local_debs() {
        let chroot = tempfile::tempdir().unwrap();
        let root = chroot.path();
        fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
        fs::create_dir_all(root.join("var/lib/apt/lists")).unwrap();
        fs::create_dir_all(root.join("usr/share/doc/libc6")).unwrap();
        fs::write(
            root.join("var/lib/dpkg/status"),
            "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc (2.41-12)\nVersion: 2.41-12+b1\nDescription: GNU C\n multi line\n\n\
             Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\n\
             Package: linux-image-6.12.117-truthdb\nStatus: install ok installed\nArchitecture: amd64\nSource: linux-upstream\nVersion: 6.12.117-1\n\n\
             Package: leftover\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2\n",
        )
        .unwrap();
        fs::write(
            root.join("var/lib/apt/lists/deb.debian.org_debian_dists_trixie_main_binary-amd64_Packages"),
            "Package: libc6\nVersion: 2.41-12+b1\nArchitecture: amd64\nSHA256: aaaa\n\nPackage: libc6\nVersion: 2.41-11\nArchitecture: amd64\nSHA256: bbbb\n",
        )
        .unwrap();
        fs::write(
            root.join("usr/share/doc/libc6/copyright"),
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nLicense: LGPL-2.1+\n",
        )
        .unwrap();
        let local = LocalDeb {
            name: "linux-image-6.12.117-truthdb".into(),
            version: "6.12.117-1".into(),
            architecture: "amd64".into(),
            sha256: "cccc".into(),
        };
        // `leftover` is in the chroot's database but not in the squashfs (not in `.packages`).
        let manifest = Path::new("image.packages");
        let debs = read_image(
            root,
            manifest,
            "libc6:amd64\t2.41-12+b1\nlinux-image-6.12.117-truthdb\t6.12.117-1\n",
            std::slice::from_ref(&local),
        )
        .unwrap();
        assert_eq!(debs.len(), 2, "{debs:?}");
        assert_eq!(debs[0].name, "libc6");
        assert_eq!((debs[0].source.as_str(), debs[0].source_version.as_str()), ("glibc", "2.41-12"));
        assert_eq!(debs[0].sha256.as_deref(), Some("aaaa"));
        assert_eq!(debs[0].license.as_deref(), Some("LGPL-2.1-or-later"));
        assert_eq!((debs[1].source.as_str(), debs[1].source_version.as_str()), ("linux-upstream", "6.12.117-1"));
        assert_eq!(debs[1].sha256.as_deref(), Some("cccc"));
        assert_eq!(debs[1].license, None);

        // A listed package the database lacks is named.
        let error = read_image(root, manifest, "libc6\t2.41-12+b1\nzstd\t1.5.7\n", &[local]).unwrap_err().to_string();
        assert!(
            error.contains("image.packages lists zstd 1.5.7, which") && error.contains("var/lib/dpkg/status"),
            "{error}"
        );
    }

    #[test]
    fn cargo_tree_lines_become_crates_without_workspace_members() {
        let tree = "truthdb-installer v0.1.0 (/src/installer)\nanyhow v1.0.99\nserde v1.0.219\nanyhow v1.0.99 (*)\ntruthdb-installer-gui v0.1.0 (/src/installer/gui)\n";
        let mut sums = BTreeMap::new();
        sums.insert(("anyhow".to_owned(), "1.0.99".to_owned()), "ab12".to_owned());
        let crates = crates_of_tree(tree, &sums);
        assert_eq!(
            crates,
            vec![
                Crate { name: "anyhow".into(), version: "1.0.99".into(), sha256: Some("ab12".into()) },
                Crate { name: "serde".into(), version: "1.0.219".into(), sha256: None },
            ]
        );
    }

    #[test]
    fn timestamps_and_identifiers_are_functions_of_the_inputs() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(1_764_547_200), "2025-12-01T00:00:00Z");
        assert_eq!(timestamp(951_825_599), "2000-02-29T11:59:59Z");
        let uuid = uuid_of(&"f".repeat(64));
        assert_eq!(uuid, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(purl_encode("1:2.3+dfsg~1"), "1%3A2.3%2Bdfsg~1");
    }

    fn facts() -> BuildFacts<'static> {
        BuildFacts {
            stem: "truthdb-os-0.1.0-amd64",
            name: "truthdb-os",
            version: "0.1.0",
            suite: "trixie",
            architecture: "amd64",
            source_date_epoch: 1_764_547_200,
            inputs_digest: "0123",
            iso_name: "truthdb-os-0.1.0-amd64.hybrid.iso",
            iso_sha256: "9999999999999999999999999999999999999999999999999999999999999999",
            commit: Some("c0ffee"),
            dirty: false,
            repository: None,
            packages_sha256: "77",
            payload: "postgresql",
            compression: "xz",
            kernel_key: "kk",
            build_root_key: "rk",
            packages_key: "pk",
            package_lock_sha256: None,
        }
    }

    #[test]
    fn the_provenance_names_the_package_lock_it_was_built_from() {
        let unlocked = provenance(&facts(), &[]);
        let dependencies = unlocked["predicate"]["buildDefinition"]["resolvedDependencies"].as_array().unwrap();
        assert!(!dependencies.iter().any(|d| d["name"] == "packages.lock"), "{dependencies:?}");
        let locked = provenance(&BuildFacts { package_lock_sha256: Some("ab12"), ..facts() }, &[]);
        let dependencies = locked["predicate"]["buildDefinition"]["resolvedDependencies"].as_array().unwrap();
        let lock = dependencies.iter().find(|d| d["name"] == "packages.lock").expect("no packages.lock");
        assert_eq!(lock["digest"]["sha256"], "ab12");
    }

    fn contents() -> ImageContents {
        ImageContents {
            debs: vec![DebPackage {
                name: "libstdc++6".into(),
                version: "14.2.0-19".into(),
                architecture: "amd64".into(),
                source: "gcc-14".into(),
                source_version: "14.2.0-19".into(),
                sha256: Some("dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd".into()),
                license: Some("GPL-3.0-or-later AND LicenseRef-GPL-3--with-GCC-exception".into()),
                notes: vec![],
            }],
            installer_version: "0.1.0".into(),
            crates: vec![Crate {
                name: "anyhow".into(),
                version: "1.0.99".into(),
                sha256: Some("ab12000000000000000000000000000000000000000000000000000000000000".into()),
            }],
        }
    }

    #[test]
    fn spdx_declares_every_licence_ref_and_relates_every_package() {
        let doc = spdx(&facts(), &contents());
        let packages = doc["packages"].as_array().unwrap();
        assert_eq!(packages.len(), 4);
        assert_eq!(packages[1]["SPDXID"], "SPDXRef-deb-0-libstdc--6");
        assert_eq!(
            packages[1]["externalRefs"][0]["referenceLocator"],
            "pkg:deb/debian/libstdc%2B%2B6@14.2.0-19?arch=amd64&distro=debian-trixie&upstream=gcc-14%4014.2.0-19"
        );
        assert_eq!(doc["hasExtractedLicensingInfos"][0]["licenseId"], "LicenseRef-GPL-3--with-GCC-exception");
        assert_eq!(doc["relationships"].as_array().unwrap().len(), 4);
        assert_eq!(doc["creationInfo"]["created"], "2025-12-01T00:00:00Z");
    }

    #[test]
    fn the_documents_are_the_same_bytes_for_the_same_build() {
        let dir_a = tempfile::tempdir().unwrap();
        let dir_b = tempfile::tempdir().unwrap();
        let a = write(dir_a.path(), &facts(), &contents()).unwrap();
        let b = write(dir_b.path(), &facts(), &contents()).unwrap();
        for (x, y) in a.all().iter().zip(b.all()) {
            assert_eq!(fs::read(x).unwrap(), fs::read(y).unwrap(), "{}", x.display());
        }
        let statement: Value = serde_json::from_str(&fs::read_to_string(&a.provenance).unwrap()).unwrap();
        assert_eq!(
            statement["subject"][0]["digest"]["sha256"],
            "9999999999999999999999999999999999999999999999999999999999999999"
        );
        assert_eq!(
            statement["predicate"]["buildDefinition"]["resolvedDependencies"][0]["digest"]["gitCommit"],
            "c0ffee"
        );
        let spdx_sum = crate::stages::checksums::sha256_file(&a.spdx).unwrap();
        assert_eq!(statement["predicate"]["runDetails"]["byproducts"][0]["digest"]["sha256"], spdx_sum.as_str());
        let cdx: Value = serde_json::from_str(&fs::read_to_string(&a.cyclonedx).unwrap()).unwrap();
        assert!(cdx["serialNumber"].as_str().unwrap().starts_with("urn:uuid:"));
        assert_eq!(cdx["components"].as_array().unwrap().len(), 3);
    }
}
