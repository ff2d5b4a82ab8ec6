//! Where a report goes (`--json`, `--html`, `--hdr-log`): a file or stdout (`-`), checked
//! before the run starts. A run of minutes that ends in "cannot write the report" has wasted
//! those minutes, so a path that cannot be written fails at once.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// An output destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Standard output (`-` on the command line).
    Stdout,
    /// A file.
    File(PathBuf),
}

impl std::str::FromStr for Output {
    type Err = String;

    fn from_str(s: &str) -> Result<Output, String> {
        match s {
            "" => Err("an output path may not be empty".into()),
            "-" => Ok(Output::Stdout),
            p => Ok(Output::File(PathBuf::from(p))),
        }
    }
}

/// Why an output cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The file cannot be created or written.
    #[error("{path}: cannot write: {source}")]
    Unwritable {
        /// The path.
        path: PathBuf,
        /// The error creating it.
        source: std::io::Error,
    },
    /// Two outputs want stdout.
    #[error("only one of --json, --html and --hdr-log can be `-` (stdout)")]
    StdoutTwice,
    /// The output would be written several times (one per run) to one destination.
    #[error("{0} `-` (stdout) cannot take one report per run here; give a path")]
    StdoutPerRun(&'static str),
}

impl Output {
    /// The file path, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Output::Stdout => None,
            Output::File(p) => Some(p),
        }
    }

    /// This output with `-TAG` before the file extension (`out.json` → `out-direct.json`).
    pub fn suffixed(&self, tag: &str) -> Output {
        match self {
            Output::Stdout => Output::Stdout,
            Output::File(p) => Output::File(suffixed(p, tag)),
        }
    }

    /// Check that the file can be written: create it (and its content stays as it was if it
    /// existed; a file created only for the check is removed again).
    ///
    /// # Errors
    /// [`OutputError::Unwritable`].
    pub fn check(&self) -> Result<(), OutputError> {
        let Output::File(p) = self else {
            return Ok(());
        };
        let existed = p.exists();
        let unwritable = |source| OutputError::Unwritable {
            path: p.clone(),
            source,
        };
        if p.is_dir() {
            return Err(unwritable(std::io::Error::other("it is a directory")));
        }
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(p)
            .map_err(unwritable)?;
        if !existed {
            let _ = std::fs::remove_file(p);
        }
        Ok(())
    }

    /// Write `bytes` to this output.
    ///
    /// # Errors
    /// I/O.
    pub fn write(&self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Stdout => {
                let mut o = std::io::stdout().lock();
                o.write_all(bytes)?;
                if !bytes.ends_with(b"\n") {
                    o.write_all(b"\n")?;
                }
                o.flush()
            }
            Output::File(p) => std::fs::write(p, bytes),
        }
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Stdout => f.write_str("stdout"),
            Output::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// `dir/name-TAG.ext` for `dir/name.ext`.
pub fn suffixed(p: &Path, tag: &str) -> PathBuf {
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match p.extension() {
        Some(e) => format!("{stem}-{tag}.{}", e.to_string_lossy()),
        None => format!("{stem}-{tag}"),
    };
    p.with_file_name(name)
}

/// Check a run's outputs before it starts: every file writable, at most one on stdout; when
/// `per_run` (one HTML report and HDR log per run will be written; the JSON is one document
/// whatever the runs), neither of those on stdout.
///
/// # Errors
/// The first problem found.
pub fn check_all(
    json: Option<&Output>,
    html: Option<&Output>,
    hdr_log: Option<&Output>,
    per_run: bool,
) -> Result<(), OutputError> {
    let named = [("--json", json), ("--html", html), ("--hdr-log", hdr_log)];
    let on_stdout = named
        .iter()
        .filter(|(_, o)| matches!(o, Some(Output::Stdout)))
        .count();
    if on_stdout > 1 {
        return Err(OutputError::StdoutTwice);
    }
    for (name, o) in named {
        if let Some(o) = o {
            if per_run && name != "--json" && *o == Output::Stdout {
                return Err(OutputError::StdoutPerRun(name));
            }
            o.check()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dash_is_stdout_and_paths_are_checked_without_leaving_files() {
        assert_eq!("-".parse::<Output>(), Ok(Output::Stdout));
        assert!("".parse::<Output>().is_err());
        let dir = tempfile::tempdir().unwrap();
        let fresh = Output::File(dir.path().join("new.json"));
        fresh.check().unwrap();
        assert!(!dir.path().join("new.json").exists());
        let kept = dir.path().join("kept.json");
        std::fs::write(&kept, "old").unwrap();
        Output::File(kept.clone()).check().unwrap();
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "old");
        assert!(
            Output::File(dir.path().join("no/such/dir/x.json"))
                .check()
                .is_err()
        );
        assert!(Output::File(dir.path().to_path_buf()).check().is_err());
        let s = Output::Stdout;
        assert!(matches!(
            check_all(Some(&s), Some(&s), None, false),
            Err(OutputError::StdoutTwice)
        ));
        assert!(check_all(None, Some(&s), None, true).is_err());
        assert!(check_all(Some(&s), None, None, true).is_ok());
        assert_eq!(
            Output::File("a/out.json".into()).suffixed("run2"),
            Output::File("a/out-run2.json".into())
        );
    }
}
