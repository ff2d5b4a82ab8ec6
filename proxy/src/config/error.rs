//! Why a configuration cannot be used, said so that an operator can fix it: the file, the
//! line and column, and the key. Its own module because both a parse error (toml gives a
//! byte span) and a validation error (which knows the key, not the line) end up here, and
//! a SIGHUP that fails must say as much as `--check-config` does.

use std::path::{Path, PathBuf};

/// A configuration file's path and text, kept after parsing so that a validation error can
/// be located in it.
#[derive(Debug, Clone)]
pub struct Source {
    /// The file.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
}

/// An error at a place: file (if any), line and column (1-based, if known), key (dotted,
/// e.g. `limits.max_frame`, if known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The file.
    pub file: Option<PathBuf>,
    /// Line, 1-based.
    pub line: Option<usize>,
    /// Column, 1-based.
    pub column: Option<usize>,
    /// The dotted key.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Located {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.file, self.line) {
            (Some(p), Some(l)) => write!(f, "{}:{l}:{}: ", p.display(), self.column.unwrap_or(1))?,
            (Some(p), None) => write!(f, "{}: ", p.display())?,
            (None, Some(l)) => write!(f, "line {l}, column {}: ", self.column.unwrap_or(1))?,
            (None, None) => {}
        }
        match &self.key {
            // Range messages already start with their key.
            Some(k) if !self.message.starts_with(k.as_str()) => {
                write!(f, "key `{k}`: {}", self.message)
            }
            _ => f.write_str(&self.message),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config: reading {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML did not parse, or a value has the wrong type or an unknown key.
    #[error("config: {0}")]
    Parse(Box<Located>),
    /// A value is out of its documented range ([`crate::config::RANGES`]).
    #[error("config: {message}")]
    Range {
        /// The dotted key (`limits.max_frame`), for locating it in the file.
        key: String,
        /// What is wrong, starting with the key.
        message: String,
    },
    /// Values are inconsistent (names, clusters, partitions, TLS settings).
    #[error("config: {0}")]
    Invalid(String),
    /// A validation error, located in the file it came from.
    #[error("config: {0}")]
    At(Box<Located>),
}

impl ConfigError {
    /// A toml error on `text` (read from `file`), located by its span.
    pub(crate) fn parse(file: Option<&Path>, text: &str, e: &toml::de::Error) -> ConfigError {
        let (line, column, key) = match e.span() {
            Some(span) => {
                let (l, c) = line_col(text, span.start);
                (Some(l), Some(c), key_at(text, l))
            }
            None => (None, None, None),
        };
        ConfigError::Parse(Box::new(Located {
            file: file.map(Path::to_path_buf),
            line,
            column,
            key,
            message: e.message().trim().to_string(),
        }))
    }

    /// This error, located in `src`: the line of the key a range error names (if the file
    /// sets it; a default out of range has no line), else just the file.
    #[must_use]
    pub fn at(self, src: &Source) -> ConfigError {
        match self {
            ConfigError::Range { key, message } => {
                let pos = find_key(&src.text, &key);
                ConfigError::At(Box::new(Located {
                    file: Some(src.path.clone()),
                    line: pos.map(|p| p.0),
                    column: pos.map(|p| p.1),
                    key: Some(key),
                    message,
                }))
            }
            ConfigError::Invalid(message) => ConfigError::At(Box::new(Located {
                file: Some(src.path.clone()),
                line: None,
                column: None,
                key: None,
                message,
            })),
            other => other,
        }
    }
}

/// 1-based line and column of byte `at` in `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The table header a line belongs to (`limits`, `upstream`, `clusters.core`): the nearest
/// `[...]` or `[[...]]` line above it.
fn table_of(lines: &[&str], line_idx: usize) -> String {
    lines[..line_idx]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('['))
        .map(header)
        .unwrap_or_default()
}

fn header(l: &str) -> String {
    l.trim_start_matches('[')
        .split(']')
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The key a line sets (`name = ...`), without quotes.
fn key_of_line(l: &str) -> Option<String> {
    let l = l.trim();
    if l.starts_with('#') || l.starts_with('[') {
        return None;
    }
    let (k, _) = l.split_once('=')?;
    let k = k.trim().trim_matches('"').trim();
    (!k.is_empty()).then(|| k.to_string())
}

/// The dotted key set on (1-based) line `line`, or the table a header line opens.
fn key_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let idx = line.checked_sub(1)?;
    let l = lines.get(idx)?;
    if l.trim().starts_with('[') {
        return Some(header(l.trim()));
    }
    let k = key_of_line(l)?;
    let table = table_of(&lines, idx);
    Some(if table.is_empty() {
        k
    } else {
        format!("{table}.{k}")
    })
}

/// Where the file sets the dotted key `key` (first occurrence): 1-based line and column.
fn find_key(text: &str, key: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut table = String::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            table = header(t);
            continue;
        }
        let Some(k) = key_of_line(l) else { continue };
        let full = if table.is_empty() {
            k.clone()
        } else {
            format!("{table}.{k}")
        };
        if full == key {
            let col = l.find(k.as_str()).unwrap_or(0) + 1;
            return Some((i + 1, col));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_line_column_and_key() {
        let text = "workers = 2\n\n[limits]\nmax_desktops = -1\n";
        let e = toml::from_str::<crate::config::Config>(text).unwrap_err();
        let e = ConfigError::parse(Some(Path::new("/etc/p.toml")), text, &e).to_string();
        assert!(
            e.starts_with("config: /etc/p.toml:4:16: key `limits.max_desktops`"),
            "{e}"
        );
        let text = "[limits]\nbogus = 1\n";
        let e = toml::from_str::<crate::config::Config>(text).unwrap_err();
        let e = ConfigError::parse(None, text, &e).to_string();
        assert!(e.contains("line 2, column 1: key `limits.bogus`"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn range_errors_are_found_in_the_file() {
        let src = Source {
            path: "/p.toml".into(),
            text: "backlog = 7\n[limits]\n  max_frame = 10 # tiny\n".into(),
        };
        let e = ConfigError::Range {
            key: "limits.max_frame".into(),
            message: "limits.max_frame = 10 is out of range".into(),
        };
        assert_eq!(
            e.at(&src).to_string(),
            "config: /p.toml:3:3: limits.max_frame = 10 is out of range"
        );
        assert_eq!(find_key(&src.text, "backlog"), Some((1, 1)));
        assert_eq!(find_key(&src.text, "max_frame"), None, "top level only");
    }
}
