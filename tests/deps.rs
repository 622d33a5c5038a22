//! `.ci/deps` (`make deps`): a package that cannot be installed stops it with one line naming
//! the package and the command that failed, and no venv is left marked as ready.

use std::path::Path;
use std::process::Command;

/// Run a copy of `.ci/deps` in `dir` (with `requirements` as its requirements.txt), `PATH`
/// starting with `bin`, which must fail; returns (stderr, its last line).
fn failing_deps(
    dir: &Path,
    requirements: &str,
    bin: &Path,
    env: &[(&str, &str)],
) -> (String, String) {
    std::fs::create_dir_all(dir.join(".ci")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/deps"),
        dir.join(".ci/deps"),
    )
    .unwrap();
    std::fs::write(dir.join("requirements.txt"), requirements).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mut c = Command::new("bash");
    c.arg(dir.join(".ci/deps"))
        .env("PATH", path)
        .env("TMPDIR", dir)
        .env("VENV", dir.join("venv"));
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{err}");
    let last = err.lines().last().unwrap_or("").to_string();
    (err, last)
}

/// A stand-in for apt-get (nothing is installed for real): `update` succeeds, `install` exits
/// with `install_code`.
fn fake_apt(bin: &Path, install_code: i32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(bin).unwrap();
    let p = bin.join("apt-get");
    let script = format!(
        "#!/bin/sh\n[ \"$1\" = update ] && exit 0\necho \"E: Unable to locate package\" >&2\nexit {install_code}\n"
    );
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    // sudo (for a non-root run) runs the fake too
    let sudo = bin.join("sudo");
    std::fs::write(&sudo, "#!/bin/sh\nexec \"$@\"\n").unwrap();
    std::fs::set_permissions(&sudo, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_debian_package_that_cannot_be_installed_is_named() {
    if Command::new("dpkg-query")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("not a Debian system: skipped");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let bin = t.path().join("bin");
    fake_apt(&bin, 100);
    let (err, last) = failing_deps(
        &t.path().join("w"),
        "",
        &bin,
        &[("VLAL_DEPS_EXTRA", "vlal-no-such-package")],
    );
    // (where other packages are missing too, the first that fails is named)
    assert!(
        last.starts_with("make deps: cannot install the Debian package ")
            && last.contains("'apt-get install -y ")
            && err.contains("vlal-no-such-package"),
        "{err}"
    );
    if err.contains("deps: apt-get install vlal-no-such-package\n") {
        assert!(last.contains("package vlal-no-such-package:"), "{err}");
    }
    assert!(!t.path().join("w/venv").exists());
}

#[test]
fn a_python_package_that_cannot_be_installed_is_named() {
    let t = tempfile::tempdir().unwrap();
    let bin = t.path().join("bin");
    fake_apt(&bin, 0);
    // no index to find the package on (a closed local port)
    let (err, last) = failing_deps(
        &t.path().join("w"),
        "vlal-no-such-package==0.0.1\n",
        &bin,
        &[
            ("PIP_INDEX_URL", "http://127.0.0.1:9/simple"),
            ("PIP_RETRIES", "0"),
        ],
    );
    assert!(
        last.contains("cannot install the Python package vlal-no-such-package==0.0.1")
            && last.contains("pip install --no-deps -r requirements.txt' failed"),
        "{err}"
    );
    assert!(!t.path().join("w/venv/.requirements.sha256").exists());
}
