//! A virtualenv with schemathesis, for the HTTP API's OpenAPI test: beside the Python client's
//! environment (`<target>/python-env/schemathesis-<version>/`), made once and reused. Built in
//! a staging directory and renamed into place once complete, like `python.rs`; pip is
//! bounded in time. No actor supervises this: plain blocking code owned by the test binary.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// The version installed: pinned, so its command line (and what it checks) stays as tested.
pub const VERSION: &str = "4.32.5";
const PIP_TIMEOUT: Duration = Duration::from_secs(600);
const MARKER: &str = "schemathesis-complete";

fn root() -> PathBuf {
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

/// A command running schemathesis's command line from the environment (built on first use)
/// as `bin/python -m schemathesis.cli`: the `st` script's first line names the staging
/// directory the environment was built in, which is gone once it is moved into place.
///
/// # Errors
/// Why it could not be made (python3 missing, the package index unreachable, pip failing),
/// with the tail of pip's output.
pub fn st() -> Result<Command, String> {
    static ENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = root().join(format!("schemathesis-{VERSION}"));
        if !dir.join(MARKER).exists() {
            build(&dir)?;
        }
        Ok(dir.join("bin").join("python"))
    })
    .clone()
    .map(|python| {
        let mut cmd = Command::new(python);
        cmd.args(["-m", "schemathesis.cli"]);
        cmd
    })
}

fn build(dir: &Path) -> Result<(), String> {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let staging = root().join(format!(
        ".staging-schemathesis-{}-{nanos}",
        std::process::id()
    ));
    fs::create_dir_all(&staging).map_err(|e| format!("create {}: {e}", staging.display()))?;
    let log_path = staging.join("install.log");
    let log = File::create(&log_path).map_err(|e| e.to_string())?;
    let run = |mut cmd: Command, what: &str| -> Result<(), String> {
        let out = log.try_clone().map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{what}: {e}"))?;
        let deadline = Instant::now() + PIP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                if status.success() {
                    return Ok(());
                }
                let text = fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(10).collect();
                return Err(format!("{what} failed ({status}): {}", tail.join(" | ")));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} took over {PIP_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut venv = Command::new("python3");
    venv.args(["-m", "venv"]).arg(&staging);
    run(venv, "python3 -m venv")?;
    let mut pip = Command::new(staging.join("bin").join("python"));
    pip.args([
        "-m",
        "pip",
        "install",
        "--no-input",
        "--disable-pip-version-check",
        &format!("schemathesis=={VERSION}"),
    ]);
    run(pip, "pip install schemathesis")?;
    fs::write(staging.join(MARKER), VERSION).map_err(|e| e.to_string())?;
    match fs::rename(&staging, dir) {
        Ok(()) => Ok(()),
        // Another build won the race.
        Err(_) if dir.join(MARKER).exists() => {
            let _ = fs::remove_dir_all(&staging);
            Ok(())
        }
        Err(e) => Err(format!("move {} into place: {e}", staging.display())),
    }
}
