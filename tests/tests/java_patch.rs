//! The Java agent's class-file patcher (agent/java/.../ClassPatch.java) on the
//! code shapes a JSSE method may take in any JDK: tests/clients/java/patch/
//! PatchCheck.java patches every method of a sample class (switches, loops
//! to the first instruction, exception handlers, objects created across a
//! branch, long/double arguments, a method with no stack map frames), in
//! both the wrapping and the entry shape, loads the result through a class
//! loader of its own so that the JVM's verifier checks it, and compares every
//! result with the unpatched class's, hook calls counted; then feeds the
//! patcher 20,000 corrupted class files, each of which must be refused with a
//! reason or patched, never crash it. Real JDK, no root needed.
use std::process::Command;

use tokentap_e2e::*;

#[test]
fn the_class_patcher_keeps_every_method_shape_verifiable_and_refuses_garbage() {
    require_tool("javac");
    require_tool("java");
    let dir = scratch("java-patch");
    let root = workspace_root();
    let st = Command::new("javac")
        .args(["-Xlint:all", "-Werror", "-d"])
        .arg(&dir)
        .arg(root.join("agent/java/src/tokentap/agent/ClassPatch.java"))
        .arg(root.join("tests/clients/java/patch/PatchCheck.java"))
        .status()
        .expect("javac");
    assert!(st.success(), "javac");
    // The JVM's own verifier must pass every patched class (custom loaders'
    // classes are verified by default; made explicit here).
    let out = Command::new("java")
        .args(["-XX:+UnlockDiagnosticVMOptions", "-XX:+BytecodeVerificationRemote", "-cp"])
        .arg(&dir)
        .arg("tokentap.agent.PatchCheck")
        .output()
        .expect("java");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // 8 methods in each of the two shapes; every corrupted file handled.
    assert_eq!(stdout.trim(), "ok 16 20000");
}
