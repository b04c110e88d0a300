//! Debian's control-file syntax (deb822): dpkg's status, apt's Packages indexes, DEP-5
//! copyright files, a .deb's control fields.

/// Paragraphs of a Debian control-style file (deb822): fields in order, continuation lines
/// joined with newlines, names as written.
pub fn paragraphs(text: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.last_mut() {
                value.push('\n');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            current.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

pub fn field<'p>(paragraph: &'p [(String, String)], name: &str) -> Option<&'p str> {
    paragraph.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}
