//! The Python environment of the tests that run Python: a virtualenv under the target
//! directory with the `nodecloud` package of `clients/python` installed by pip, so the tests
//! need nothing from the system Python but the interpreter, and the packaging is tested too.
//!
//! [`command`] builds the environment on first use and hands out commands running its
//! interpreter. No actor supervises this: it is plain blocking code, owned by the test
//! binary, and everything it starts is waited for with a bound.
//!
//! - **Where.** `<target>/python-env/<hash>/`, where `<hash>` covers every file of the
//!   package (`pyproject.toml`, `README.md`, `nodecloud/`): a changed package gets a new
//!   environment, never a stale one.
//! - **Complete or absent.** An environment is built in a private staging directory beside
//!   it, its marker file (holding the whole hash) written last, then renamed into place. A
//!   build that failed or was killed leaves only a staging directory, which a later build
//!   removes once it is an hour old.
//! - **Concurrency.** Inside one test binary a `OnceLock` builds once while the other tests
//!   wait. Across binaries (two `cargo test` runs) each builder uses its own staging
//!   directory and the rename is atomic: the first wins and the others use its environment.
//!   A moved virtualenv keeps working when run as `bin/python -m …`: Python finds
//!   `pyvenv.cfg` beside the interpreter it was started as.
//! - **Bounded.** `python3 -m venv` gets two minutes, `pip install` five; past that the
//!   process is killed and the error says so.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

/// The interpreter the environment is made from.
const SYSTEM_PYTHON: &str = "python3";
const VENV_TIMEOUT: Duration = Duration::from_secs(120);
const PIP_TIMEOUT: Duration = Duration::from_secs(300);
/// A staging directory this old belongs to a build that died (a live one is bounded by the
/// timeouts above).
const STALE_STAGING: Duration = Duration::from_secs(3600);
/// How often a bounded wait looks at its child: std has no wait-with-timeout.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Written last into a finished environment; holds the package hash.
const MARKER: &str = "nodecloud-env-complete";
/// pip's output, kept in the environment (or in the staging directory of a failed build).
const LOG: &str = "install.log";
const STAGING_PREFIX: &str = ".staging-";
/// Lines of a failed step's log quoted in its error.
const LOG_TAIL_LINES: usize = 15;

/// Why the Python environment could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EnvError {
    #[error(
        "`{program}` was not found: the tests that run the Python client need python3 (3.8 or \
         later) on PATH, with its venv module and pip; the first run also needs the package \
         index, for cbor2 and setuptools"
    )]
    NoPython { program: String },
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: Arc<io::Error>,
    },
    #[error("{step} failed ({status}){hint}; its output is in {}:\n{tail}", log.display())]
    Failed {
        step: &'static str,
        status: String,
        hint: &'static str,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "{step} did not finish within {} s and was stopped; its output is in {}",
        after.as_secs(),
        log.display()
    )]
    TimedOut {
        step: &'static str,
        after: Duration,
        log: PathBuf,
    },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> EnvError {
    let path = path.to_owned();
    move |e| EnvError::Io {
        what,
        path,
        source: Arc::new(e),
    }
}

/// The package's source in this checkout.
pub fn package_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python")
}

/// The directory the environments live in: `python-env` in the target directory of this
/// test binary (`<target>/<profile>/deps/<binary>`), so `CARGO_TARGET_DIR` is honoured.
fn envs_root() -> PathBuf {
    let target = std::env::current_exe().ok().and_then(|exe| {
        exe.parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .map(Path::to_owned)
    });
    target
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("python-env")
}

/// The environment of this checkout's package, built on first use; the same result for
/// every caller in this process.
///
/// # Errors
/// The first failure, for every caller: python3 missing, venv or pip failing or too slow.
pub fn env() -> Result<&'static Path, &'static EnvError> {
    static ENV: OnceLock<Result<PathBuf, EnvError>> = OnceLock::new();
    ENV.get_or_init(|| prepare(SYSTEM_PYTHON, &package_source(), &envs_root()))
        .as_ref()
        .map(PathBuf::as_path)
}

/// A command running the environment's Python in the checkout's root, importing the
/// installed package (`PYTHONSAFEPATH`: a script's own directory is not searched first).
///
/// # Panics
/// If the environment cannot be made; the message says what is missing and where pip's
/// output is.
pub fn command() -> Command {
    let dir = match env() {
        Ok(dir) => dir,
        Err(e) => panic!("no Python environment for the tests: {e}"),
    };
    let mut cmd = Command::new(interpreter(dir));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PYTHONSAFEPATH", "1")
        .env_remove("PYTHONPATH")
        .env_remove("PYTHONHOME");
    cmd
}

fn interpreter(env_dir: &Path) -> PathBuf {
    env_dir.join("bin").join("python")
}

/// The files that make up the package, relative to `source`, sorted: what is hashed and
/// what is installed. Build leftovers (`build/`, `*.egg-info`, `__pycache__`) are not.
fn package_files(source: &Path) -> Result<Vec<PathBuf>, EnvError> {
    let mut files = vec![PathBuf::from("pyproject.toml"), PathBuf::from("README.md")];
    let mut dirs = vec![PathBuf::from("nodecloud")];
    while let Some(dir) = dirs.pop() {
        let full = source.join(&dir);
        for entry in fs::read_dir(&full).map_err(io_error("list", &full))? {
            let entry = entry.map_err(io_error("list", &full))?;
            let name = entry.file_name();
            let rel = dir.join(&name);
            let kind = entry
                .file_type()
                .map_err(io_error("inspect", &entry.path()))?;
            if kind.is_dir() {
                if name != "__pycache__" {
                    dirs.push(rel);
                }
            } else if rel.extension().is_none_or(|e| e != "pyc") {
                files.push(rel);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// SHA-256, in hex, of each file's relative path and contents.
fn package_hash(source: &Path, files: &[PathBuf]) -> Result<String, EnvError> {
    let mut hasher = Sha256::new();
    for rel in files {
        let full = source.join(rel);
        let data = fs::read(&full).map_err(io_error("read", &full))?;
        hasher.update(rel.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update((data.len() as u64).to_be_bytes());
        hasher.update(&data);
    }
    let mut hex = String::with_capacity(64);
    for b in hasher.finalize() {
        let _ = write!(hex, "{b:02x}");
    }
    Ok(hex)
}

fn is_complete(env_dir: &Path, hash: &str) -> bool {
    fs::read_to_string(env_dir.join(MARKER)).is_ok_and(|m| m.trim() == hash)
}

/// The environment for the package at `source`, under `root`, made with `python` unless a
/// complete one is there already.
pub fn prepare(python: &str, source: &Path, root: &Path) -> Result<PathBuf, EnvError> {
    let files = package_files(source)?;
    let hash = package_hash(source, &files)?;
    let env_dir = root.join(&hash[..16]);
    if is_complete(&env_dir, &hash) {
        return Ok(env_dir);
    }
    fs::create_dir_all(root).map_err(io_error("create", root))?;
    remove_stale_staging(root);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let staging = root.join(format!(
        "{STAGING_PREFIX}{}-{}-{nanos}",
        &hash[..16],
        std::process::id()
    ));
    build(python, source, &files, &hash, &staging)?;
    match fs::rename(&staging, &env_dir) {
        Ok(()) => {
            remove_other_envs(root, &env_dir);
            Ok(env_dir)
        }
        // Another build won the race: its environment is as good as ours.
        Err(_) if is_complete(&env_dir, &hash) => {
            let _ = fs::remove_dir_all(&staging);
            Ok(env_dir)
        }
        Err(e) => Err(io_error("move the new environment into", &env_dir)(e)),
    }
}

/// venv, then pip, then the marker, all inside `staging`. On failure `staging` stays, with
/// its log, for the reader of the error.
fn build(
    python: &str,
    source: &Path,
    files: &[PathBuf],
    hash: &str,
    staging: &Path,
) -> Result<(), EnvError> {
    fs::create_dir_all(staging).map_err(io_error("create", staging))?;
    let log_path = staging.join(LOG);
    let log = File::create(&log_path).map_err(io_error("create", &log_path))?;

    let mut venv = Command::new(python);
    venv.args(["-m", "venv"]).arg(staging);
    match run_bounded(venv, &log, &log_path, VENV_TIMEOUT, "`python3 -m venv`") {
        Err(EnvError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            let _ = fs::remove_dir_all(staging);
            return Err(EnvError::NoPython {
                program: python.to_owned(),
            });
        }
        Err(e) => return Err(e),
        Ok(status) if !status.success() => {
            return Err(failed(
                "`python3 -m venv`",
                status,
                " (on Debian and Ubuntu the venv module is the python3-venv package)",
                &log_path,
            ))
        }
        Ok(_) => {}
    }

    // pip builds in the source tree: build from a private copy, so the checkout stays clean
    // and two builds never share a build directory.
    let copy = staging.join("package-source");
    for rel in files {
        let to = copy.join(rel);
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir).map_err(io_error("create", dir))?;
        }
        fs::copy(source.join(rel), &to).map_err(io_error("copy the package to", &to))?;
    }
    let mut pip = Command::new(interpreter(staging));
    pip.args([
        "-m",
        "pip",
        "install",
        "--no-input",
        "--disable-pip-version-check",
    ])
    .arg(&copy);
    let status = run_bounded(
        pip,
        &log,
        &log_path,
        PIP_TIMEOUT,
        "`pip install clients/python`",
    )?;
    if !status.success() {
        return Err(failed(
            "`pip install clients/python`",
            status,
            "",
            &log_path,
        ));
    }
    let _ = fs::remove_dir_all(&copy);
    let marker = staging.join(MARKER);
    fs::write(&marker, format!("{hash}\n")).map_err(io_error("write", &marker))
}

/// Runs `cmd` with its output appended to `log`, killing it after `limit`.
fn run_bounded(
    mut cmd: Command,
    log: &File,
    log_path: &Path,
    limit: Duration,
    step: &'static str,
) -> Result<ExitStatus, EnvError> {
    let out = log.try_clone().map_err(io_error("write", log_path))?;
    let err = log.try_clone().map_err(io_error("write", log_path))?;
    let program = PathBuf::from(cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(io_error("run", &program))?;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().map_err(io_error("wait for", &program))? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(EnvError::TimedOut {
                step,
                after: limit,
                log: log_path.to_owned(),
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn failed(step: &'static str, status: ExitStatus, hint: &'static str, log: &Path) -> EnvError {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    EnvError::Failed {
        step,
        status: status.to_string(),
        hint,
        log: log.to_owned(),
        tail,
    }
}

/// Best effort: staging directories of builds that died long ago.
fn remove_stale_staging(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_STAGING);
        if stale
            && entry
                .file_name()
                .to_string_lossy()
                .starts_with(STAGING_PREFIX)
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Best effort: complete environments of earlier versions of the package.
fn remove_other_envs(root: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path != keep && path.join(MARKER).is_file() {
            let _ = fs::remove_dir_all(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of the package's files in a temporary directory.
    fn package_copy() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let source = package_source();
        for rel in package_files(&source).unwrap() {
            let to = dir.path().join(&rel);
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::copy(source.join(&rel), to).unwrap();
        }
        dir
    }

    #[test]
    fn the_package_hash_changes_when_a_module_changes_and_ignores_bytecode() {
        let pkg = package_copy();
        let files = package_files(pkg.path()).unwrap();
        assert!(
            files.contains(&PathBuf::from("nodecloud/__init__.py")),
            "{files:?}"
        );
        let before = package_hash(pkg.path(), &files).unwrap();

        fs::create_dir_all(pkg.path().join("nodecloud/__pycache__")).unwrap();
        fs::write(pkg.path().join("nodecloud/__pycache__/x.pyc"), b"junk").unwrap();
        let files = package_files(pkg.path()).unwrap();
        assert_eq!(package_hash(pkg.path(), &files).unwrap(), before);

        let module = pkg.path().join("nodecloud/__init__.py");
        let mut text = fs::read_to_string(&module).unwrap();
        text.push_str("\n# changed\n");
        fs::write(&module, text).unwrap();
        assert_ne!(package_hash(pkg.path(), &files).unwrap(), before);
    }

    #[test]
    fn a_complete_environment_is_reused_without_running_python() {
        let pkg = package_copy();
        let root = tempfile::tempdir().unwrap();
        let files = package_files(pkg.path()).unwrap();
        let hash = package_hash(pkg.path(), &files).unwrap();
        let env_dir = root.path().join(&hash[..16]);
        fs::create_dir_all(&env_dir).unwrap();
        fs::write(env_dir.join(MARKER), format!("{hash}\n")).unwrap();
        // No interpreter by this name: reaching for one would fail.
        let got = prepare("nodecloud-no-such-python", pkg.path(), root.path()).unwrap();
        assert_eq!(got, env_dir);
    }

    #[test]
    fn a_missing_interpreter_is_named_and_leaves_nothing_behind() {
        let pkg = package_copy();
        let root = tempfile::tempdir().unwrap();
        let err = prepare("nodecloud-no-such-python", pkg.path(), root.path()).unwrap_err();
        assert!(matches!(err, EnvError::NoPython { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with("`nodecloud-no-such-python` was not found")
                && text.contains("venv module and pip"),
            "{text}"
        );
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_failed_pip_install_names_its_log_and_is_not_taken_for_complete() {
        let pkg = package_copy();
        fs::write(pkg.path().join("pyproject.toml"), "[project\nname = broken").unwrap();
        let root = tempfile::tempdir().unwrap();
        let err = prepare(SYSTEM_PYTHON, pkg.path(), root.path()).unwrap_err();
        let EnvError::Failed { step, log, .. } = &err else {
            panic!("expected pip to fail, got {err:?}");
        };
        assert_eq!(*step, "`pip install clients/python`");
        assert!(
            err.to_string().contains(&log.display().to_string()),
            "{err}"
        );
        assert!(!fs::read_to_string(log).unwrap().is_empty());
        // Only the staging directory is left, with the log: no environment to re-use.
        let names: Vec<String> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.len() == 1 && names[0].starts_with(STAGING_PREFIX),
            "{names:?}"
        );
        assert!(log.starts_with(root.path().join(&names[0])));
    }

    #[test]
    fn an_environment_without_its_marker_is_rebuilt_not_reused() {
        let pkg = package_copy();
        let root = tempfile::tempdir().unwrap();
        let files = package_files(pkg.path()).unwrap();
        let hash = package_hash(pkg.path(), &files).unwrap();
        // A half-built environment (no marker) in the final place is not taken for done.
        fs::create_dir_all(root.path().join(&hash[..16]).join("bin")).unwrap();
        let err = prepare("nodecloud-no-such-python", pkg.path(), root.path()).unwrap_err();
        assert!(matches!(err, EnvError::NoPython { .. }), "{err:?}");
    }
}
