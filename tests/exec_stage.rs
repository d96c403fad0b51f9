//! The `exec` stage: a step in another language, its errors, and its cache key.

mod common;

use common::*;
use shapeflow_core::Status;

#[test]
fn child_entry() {
    maybe_run_child();
}

const PIPE: &str = r#"name: exec-test
stages:
  src: {plugin: numbers, params: {n: 4}}
  double:
    plugin: exec
    after: [src]
    params:
      command: [python3, double.py, "{input:src}", "{output}", "{case}"]
      output: json
      depends: [double.py]
  total: {plugin: sum, after: [double]}
"#;

const SCRIPT: &str = r#"import json, sys
src, out, case = sys.argv[1:4]
d = json.load(open(src))
if case == "c02" and len(sys.argv) > 4:
    sys.stderr.write("cannot handle case c02\n")
    sys.exit(3)
json.dump({"value": d["value"] * 2, "case": case}, open(out, "w"))
"#;

#[test]
fn exec_runs_a_python_step_per_case_and_caches_it() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "p.yaml", PIPE);
    write(d.path(), "double.py", SCRIPT);
    let r = run_in(d.path(), "p.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    assert_eq!(r.node("double", "default").unwrap().computed, 4);
    // Values: numbers gives 0..3, doubled and summed = 12. Check through an exec that
    // prints the sum it receives.
    let check = format!(
        "{PIPE}  show:\n    plugin: exec\n    after: [src, total]\n    params:\n      command: [python3, -c, \"import json,sys; t=json.load(open(sys.argv[1]))['value']; json.dump({{'value': t}}, open(sys.argv[2],'w')); assert t == 12, t\", \"{{input:total}}\", \"{{output}}\"]\n      output: json\n"
    );
    write(d.path(), "p.yaml", &check);
    let r = run_in(d.path(), "p.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    assert_eq!(r.node("show", "default").unwrap().computed, 4);
    assert_eq!(r.node("double", "default").unwrap().computed, 0);
}

#[test]
fn editing_the_script_or_command_recomputes() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "p.yaml", PIPE);
    write(d.path(), "double.py", SCRIPT);
    run_in(d.path(), "p.yaml", &[]);
    write(d.path(), "double.py", &format!("{SCRIPT}\n# edited\n"));
    let r = run_in(d.path(), "p.yaml", &[]);
    assert_eq!(
        r.node("double", "default").unwrap().computed,
        4,
        "{}",
        r.table()
    );
    assert_eq!(r.node("src", "default").unwrap().computed, 0);
    let r = run_in(d.path(), "p.yaml", &["double.env={X: '1'}"]);
    assert_eq!(
        r.node("double", "default").unwrap().computed,
        4,
        "{}",
        r.table()
    );
}

#[test]
fn nonzero_exit_is_a_named_error_with_stderr() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "p.yaml",
        &PIPE.replace("\"{case}\"]", "\"{case}\", strict]"),
    );
    write(d.path(), "double.py", SCRIPT);
    let r = run_in(d.path(), "p.yaml", &[]);
    let n = r.node("double", "default").unwrap();
    match &n.status {
        Status::Failed(m) => {
            assert!(m.contains("case `c02`"), "{m}");
            assert!(m.contains("exited with status 3"), "{m}");
            assert!(m.contains("cannot handle case c02"), "{m}");
        }
        s => panic!("expected failure, got {s:?}"),
    }
    assert_eq!(n.computed, 3);
    assert_eq!(
        r.node("total", "default").unwrap().status,
        Status::Skipped("double".into())
    );
}

#[test]
fn missing_output_is_a_named_error() {
    let d = tempfile::tempdir().unwrap();
    let text = "stages:\n  src: {plugin: numbers, params: {n: 1}}\n  x: {plugin: exec, after: [src], params: {command: [\"true\"], output: json}}\n";
    write(d.path(), "p.yaml", text);
    let r = run_in(d.path(), "p.yaml", &[]);
    match &r.node("x", "default").unwrap().status {
        Status::Failed(m) => assert!(
            m.contains("wrote no JSON") && m.contains("output.json"),
            "{m}"
        ),
        s => panic!("{s:?}"),
    }
    // Nothing was cached for the failed item.
    let r = run_in(d.path(), "p.yaml", &[]);
    assert_eq!(r.node("x", "default").unwrap().computed, 0);
    assert!(matches!(
        r.node("x", "default").unwrap().status,
        Status::Failed(_)
    ));
}

#[test]
fn empty_command_is_a_validation_error() {
    let d = tempfile::tempdir().unwrap();
    let yaml = "stages:\n  src: {plugin: numbers, params: {n: 1}}\n  x: {plugin: exec, after: [src], params: {command: []}}\n";
    write(d.path(), "p.yaml", yaml);
    let out = run_child(d.path(), &["validate", "p.yaml"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("p.yaml:3:") && t.contains("`command` must name a program"),
        "{t}"
    );
}
