//! The openssl command line tool: an implementation nobody here wrote, to check ours against.

use std::process::Command;

/// `openssl`, if installed. Without it a test skips its openssl part (saying so), except in CI,
/// which installs it: there a missing tool fails the test.
pub fn openssl() -> Option<Command> {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "openssl is required in CI (.ci/run installs it)"
        );
        eprintln!("openssl not installed: skipping the openssl part of this test");
    }
    found.then(|| Command::new("openssl"))
}
