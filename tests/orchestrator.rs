//! The orchestrator end to end: validation errors, caching behaviour, failures, variants,
//! concurrency, and real child processes (kill -9, Ctrl-C, two runs on one cache).

mod common;

use common::*;
use shapeflow::cli::{run_pipeline, RunSettings};
use shapeflow_core::config::{parse_set, ErrorKind};
use shapeflow_core::{resolve, PipelineFile, Plugin, Registry, RunReport, Status};
use std::path::Path;
use std::time::{Duration, Instant};

/// Entry point of child processes (see `common::child`); a no-op in a normal test run.
#[test]
fn child_entry() {
    maybe_run_child();
}

fn counts(r: &RunReport, stage: &str, variant: &str) -> (usize, usize) {
    let n = r
        .node(stage, variant)
        .unwrap_or_else(|| panic!("no node {stage}/{variant}"));
    (n.computed, n.cached)
}

const CHAIN: &str = "name: chain
stages:
  src:   {plugin: numbers, params: {n: 6}}
  a:     {plugin: add, after: [src], params: {add: 1}}
  b:     {plugin: add, after: [a], params: {add: 10}}
  total: {plugin: sum, after: [b]}
  side:  {plugin: add, after: [src], params: {add: 100}}
";

// ---------- validation: each error kind, with line and column ----------

fn errors_of(text: &str, sets: &[&str]) -> Vec<shapeflow_core::ConfigError> {
    let file = match PipelineFile::parse(Path::new("p.yaml"), text, &|_| None) {
        Ok(f) => f,
        Err(e) => return e.0,
    };
    let sets: Vec<_> = sets.iter().map(|s| parse_set(s).unwrap()).collect();
    match resolve::resolve(&file, &registry(), &sets) {
        Ok(_) => vec![],
        Err(e) => e.0,
    }
}

fn one_error(text: &str, sets: &[&str], kind: ErrorKind, line: u64, column: u64, needle: &str) {
    let errs = errors_of(text, sets);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    let e = &errs[0];
    let shown = e.to_string();
    assert_eq!(e.kind, kind, "{shown}");
    assert_eq!((e.pos.line, e.pos.column), (line, column), "{shown}");
    assert!(
        shown.contains(needle),
        "{shown:?} should mention {needle:?}"
    );
    if line > 0 {
        assert!(
            shown.starts_with(&format!("p.yaml:{line}:{column}: ")),
            "{shown}"
        );
    }
}

#[test]
fn error_unknown_plugin_suggests_nearest() {
    one_error(
        "stages:\n  s: {plugin: numbrs}\n",
        &[],
        ErrorKind::UnknownPlugin,
        2,
        15,
        "did you mean `numbers`",
    );
}

#[test]
fn error_unknown_param_points_at_key() {
    let text = "stages:\n  s:\n    plugin: numbers\n    params:\n      n: 3\n      nn: 4\n";
    one_error(
        text,
        &[],
        ErrorKind::UnknownParam,
        6,
        7,
        "unknown param `nn`",
    );
}

#[test]
fn error_mistyped_param_points_at_value() {
    let text = "stages:\n  s:\n    plugin: numbers\n    params:\n      n: lots\n";
    one_error(text, &[], ErrorKind::BadParam, 5, 10, "param `n`");
}

#[test]
fn error_unknown_dependency() {
    let text = "stages:\n  s: {plugin: numbers}\n  t: {plugin: add, after: [s, x]}\n";
    one_error(text, &[], ErrorKind::UnknownDependency, 3, 31, "`x`");
}

#[test]
fn error_cycle_names_the_stages() {
    let text = "stages:\n  s: {plugin: numbers}\n  a: {plugin: add, after: [s, b]}\n  b: {plugin: add, after: [a]}\n";
    one_error(text, &[], ErrorKind::Cycle, 3, 3, "a -> b -> a");
}

#[test]
fn error_duplicate_key() {
    let text = "stages:\n  s: {plugin: numbers}\n  s: {plugin: numbers}\n";
    let errs = errors_of(text, &[]);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].kind, ErrorKind::DuplicateKey, "{}", errs[0]);
    assert_eq!(errs[0].pos.line, 3, "{}", errs[0]);
}

#[test]
fn error_variant_overrides_missing_param() {
    let text = "stages:\n  s: {plugin: numbers}\n  a: {plugin: add, after: [s]}\nvariants:\n  v1: {a.ad: 3}\n";
    one_error(text, &[], ErrorKind::BadVariant, 5, 8, "did you mean `add`");
}

#[test]
fn error_variant_overrides_missing_stage() {
    let text = "stages:\n  s: {plugin: numbers}\nvariants:\n  v1: {z.n: 3}\n";
    one_error(text, &[], ErrorKind::BadVariant, 4, 8, "no stage `z`");
}

#[test]
fn error_set_is_validated_like_the_file() {
    one_error(
        CHAIN,
        &["a.nope=3"],
        ErrorKind::BadOverride,
        0,
        0,
        "--set a.nope",
    );
    one_error(
        CHAIN,
        &["a.add=abc"],
        ErrorKind::BadParam,
        0,
        0,
        "param `add`",
    );
}

#[test]
fn error_unknown_field_and_missing_env() {
    one_error(
        "stages:\n  s: {plugin: numbers, aftr: [x]}\n",
        &[],
        ErrorKind::UnknownField,
        2,
        24,
        "did you mean `after`",
    );
    one_error(
        "stages:\n  s: {plugin: numbers, params: {dir: \"${NO_SUCH_VAR}/x\"}}\n",
        &[],
        ErrorKind::Env,
        2,
        38,
        "NO_SUCH_VAR",
    );
}

#[test]
fn env_default_is_used() {
    let text = "stages:\n  s: {plugin: numbers, params: {dir: \"${NO_SUCH_VAR:-/tmp/d}\"}}\n";
    let f = PipelineFile::parse(Path::new("p.yaml"), text, &|_| None).unwrap();
    assert_eq!(
        f.stages[0].params.get("dir").unwrap().as_str(),
        Some("/tmp/d")
    );
}

#[test]
fn all_errors_reported_together() {
    let text = "stages:\n  s: {plugin: numbrs}\n  t: {plugin: ad, after: [s]}\n";
    assert_eq!(errors_of(text, &[]).len(), 2);
}

// ---------- caching ----------

#[test]
fn second_run_computes_nothing() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "p.yaml", CHAIN);
    let r1 = run_in(d.path(), "p.yaml", &[]);
    assert!(r1.ok(), "{}", r1.table());
    assert_eq!(r1.computed(), 6 * 4 + 1);
    let r2 = run_in(d.path(), "p.yaml", &[]);
    assert!(r2.ok());
    assert_eq!(r2.computed(), 0, "{}", r2.table());
    assert_eq!(r2.cached(), 6 * 4 + 1);
}

#[test]
fn param_change_recomputes_only_descendants_and_revert_hits_cache() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "p.yaml", CHAIN);
    run_in(d.path(), "p.yaml", &[]);
    let r = run_in(d.path(), "p.yaml", &["a.add=2"]);
    assert_eq!(counts(&r, "src", "default"), (0, 6));
    assert_eq!(counts(&r, "side", "default"), (0, 6));
    assert_eq!(counts(&r, "a", "default"), (6, 0));
    assert_eq!(counts(&r, "b", "default"), (6, 0));
    assert_eq!(counts(&r, "total", "default"), (1, 0));
    // Revert: everything from the cache.
    let r = run_in(d.path(), "p.yaml", &[]);
    assert_eq!(r.computed(), 0, "{}", r.table());
}

#[test]
fn adding_a_case_computes_one_item_per_stage() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for i in 0..5 {
        write(&data, &format!("k{i}.txt"), &i.to_string());
    }
    let text = CHAIN.replace("{n: 6}", &format!("{{dir: \"{}\"}}", data.display()));
    write(d.path(), "p.yaml", &text);
    run_in(d.path(), "p.yaml", &[]);
    write(&data, "k9.txt", "9");
    let r = run_in(d.path(), "p.yaml", &[]);
    for s in ["src", "a", "b", "side"] {
        assert_eq!(counts(&r, s, "default"), (1, 5), "{s}: {}", r.table());
    }
    assert_eq!(counts(&r, "total", "default"), (1, 0));
    // Editing one case's data recomputes that case only.
    write(&data, "k2.txt", "22");
    let r = run_in(d.path(), "p.yaml", &[]);
    assert_eq!(counts(&r, "b", "default"), (1, 5));
}

#[test]
fn plan_explains_what_would_be_computed() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "p.yaml", CHAIN);
    run_in(d.path(), "p.yaml", &[]);
    let out = run_child(
        d.path(),
        &["plan", "p.yaml", "--cache", "cache", "--set", "b.add=3"],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    let line = |stage: &str| {
        t.lines()
            .find(|l| l.starts_with(stage))
            .unwrap_or_else(|| panic!("{stage} in {t}"))
            .to_string()
    };
    assert!(line("b ").contains("params changed (6)"), "{t}");
    assert!(line("total").contains("input changed (1)"), "{t}");
    assert!(line("a ").split_whitespace().nth(3) == Some("0"), "{t}");
    // Nothing ran: a real run still finds b to compute.
    let r = run_in(d.path(), "p.yaml", &["b.add=3"]);
    assert_eq!(counts(&r, "b", "default"), (6, 0));
}

#[test]
fn corrupt_cache_entry_is_recomputed_not_used() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "p.yaml", CHAIN);
    run_in(d.path(), "p.yaml", &[]);
    // Damage every stored object of stage `a`.
    let objects = d.path().join("cache/objects");
    let mut damaged = 0;
    for shard in std::fs::read_dir(&objects).unwrap().flatten() {
        for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
            let mut b = std::fs::read(f.path()).unwrap();
            if String::from_utf8_lossy(&b).contains("\"stage\":\"a\"") {
                let n = b.len();
                b[n - 2] ^= 0x55;
                std::fs::write(f.path(), b).unwrap();
                damaged += 1;
            }
        }
    }
    assert_eq!(damaged, 6);
    // Downstream is cached, so nothing reads `a`; verify reports the damage.
    let out = run_child(d.path(), &["cache", "--cache", "cache", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("6 corrupt"), "{}", text(&out));
    // Changing b makes it read a: the corrupt items are recomputed, never used.
    let r = run_in(d.path(), "p.yaml", &["b.add=11"]);
    assert!(r.ok(), "{}", r.table());
    let out = run_child(d.path(), &["cache", "--cache", "cache", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

// ---------- failures, variants, concurrency ----------

#[test]
fn failure_skips_dependents_and_other_branch_completes() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "p.yaml", CHAIN);
    let r = run_in(d.path(), "p.yaml", &["a.fail_on=c03"]);
    assert!(!r.ok());
    let a = r.node("a", "default").unwrap();
    assert!(
        matches!(&a.status, Status::Failed(m) if m.contains("c03") && m.contains("on purpose")),
        "{:?}",
        a.status
    );
    assert_eq!(
        a.computed, 5,
        "the other cases of the failed stage are kept"
    );
    for s in ["b", "total"] {
        assert_eq!(
            r.node(s, "default").unwrap().status,
            Status::Skipped("a".into()),
            "{}",
            r.table()
        );
    }
    assert_eq!(r.node("side", "default").unwrap().status, Status::Done);
    assert_eq!(counts(&r, "side", "default"), (6, 0));
    // Through the CLI: exit 1, a table naming the failure.
    let out = run_child(
        d.path(),
        &[
            "run",
            "p.yaml",
            "--cache",
            "cache",
            "--set",
            "a.fail_on=c03",
        ],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("skipped: `a` failed"), "{t}");
    assert!(t.contains("FAILED"), "{t}");
}

/// What a stage logs names the stage and the variants it ran for (a stage shared by every
/// variant: its id alone).
#[test]
fn stage_logs_name_their_stage_and_variant() {
    let d = tempfile::tempdir().unwrap();
    let yaml = format!("{CHAIN}variants:\n  one: {{b.add: 1}}\n  two: {{b.add: 2}}\n");
    write(d.path(), "p.yaml", &yaml);
    let out = run_child(
        d.path(),
        &["run", "p.yaml", "--cache", "cache", "--no-progress"],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    for label in [
        "stage{label=a}",
        "stage{label=b[one]}",
        "stage{label=b[two]}",
    ] {
        assert!(
            t.contains(&format!("{label}: added case=c03")),
            "{label}: {t}"
        );
    }
}

#[test]
fn variants_share_identical_stages() {
    let d = tempfile::tempdir().unwrap();
    let text = format!("{CHAIN}variants:\n  one: {{b.add: 1}}\n  two: {{b.add: 2}}\n  three: {{b.add: 2, total.scale: 3}}\n");
    write(d.path(), "p.yaml", &text);
    let r = run_in(d.path(), "p.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    // src, a, side shared by all three; b once for `one`, once for `two`+`three`; total 3x.
    let nodes_of = |s: &str| r.nodes.iter().filter(|n| n.stage == s).count();
    assert_eq!(
        (
            nodes_of("src"),
            nodes_of("a"),
            nodes_of("side"),
            nodes_of("b"),
            nodes_of("total")
        ),
        (1, 1, 1, 2, 3)
    );
    assert_eq!(r.computed(), 6 + 6 + 6 + 12 + 3);
    // The variants give different results (checked through the manifest's keys).
    assert_ne!(
        r.node("total", "one").unwrap().label,
        r.node("total", "two").unwrap().label
    );
}

#[test]
fn independent_stages_run_concurrently() {
    let d = tempfile::tempdir().unwrap();
    let text = "stages:
  src: {plugin: numbers, params: {n: 1}}
  left:  {plugin: add, after: [src], params: {meet: m, meet_count: 2}}
  right: {plugin: add, after: [src], params: {meet: m, meet_count: 2, add: 1}}
";
    write(d.path(), "p.yaml", text);
    let r = run_in(d.path(), "p.yaml", &[]);
    assert!(
        r.ok(),
        "both branches must be in flight together:\n{}",
        r.table()
    );
}

#[test]
fn exclusive_resource_is_never_shared() {
    let d = tempfile::tempdir().unwrap();
    let text = "stages:
  src: {plugin: numbers, params: {n: 3}}
  g1: {plugin: add, after: [src], params: {resource: probe-gpu, sleep_ms: 60}}
  g2: {plugin: add, after: [src], params: {resource: probe-gpu, sleep_ms: 60, add: 1}}
";
    write(d.path(), "p.yaml", text);
    common::MAX_ACTIVE.store(0, std::sync::atomic::Ordering::SeqCst);
    let r = run_in(d.path(), "p.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    assert_eq!(
        common::MAX_ACTIVE.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[test]
fn time_spent_waiting_for_a_resource_is_reported_apart_from_the_stages_wall_time() {
    // Two stages of 3 items x 200 ms on one exclusive resource: the second waits for the
    // first's 0.6 s and then runs its own 0.6 s; its wall time is the latter only.
    let d = tempfile::tempdir().unwrap();
    let text = "stages:
  src: {plugin: numbers, params: {n: 3}}
  g1: {plugin: add, after: [src], params: {resource: wait-gpu, sleep_ms: 200}}
  g2: {plugin: add, after: [src], params: {resource: wait-gpu, sleep_ms: 200, add: 1}}
";
    write(d.path(), "p.yaml", text);
    let r = run_in(d.path(), "p.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    let [a, b] = ["g1", "g2"].map(|s| r.nodes.iter().find(|n| n.stage == s).unwrap());
    let (first, second) = if a.waited_s <= b.waited_s {
        (a, b)
    } else {
        (b, a)
    };
    // Lower bounds and comparisons only: on a loaded machine every span stretches, but the
    // second's wall time stays clearly below what it would be if it counted its wait.
    assert!(second.waited_s >= 0.5, "{}", r.table());
    assert!(first.waited_s + 0.3 < second.waited_s, "{}", r.table());
    for n in [first, second] {
        assert!(n.wall_s >= 0.55, "{}", r.table());
    }
    assert!(
        second.wall_s + 0.3 < second.waited_s + first.wall_s,
        "the second's wall time must leave out its wait:\n{}",
        r.table()
    );
    let table = r.table();
    assert!(table.lines().next().unwrap().ends_with("waited"), "{table}");
}

#[test]
fn a_resource_with_two_slots_runs_two_stages_at_once() {
    let d = tempfile::tempdir().unwrap();
    let text = "stages:
  src: {plugin: numbers, params: {n: 1}}
  g1: {plugin: add, after: [src], params: {resource: shared-gpu, meet: slots, meet_count: 2}}
  g2: {plugin: add, after: [src], params: {resource: shared-gpu, meet: slots, meet_count: 2, add: 1}}
";
    write(d.path(), "p.yaml", text);
    let (r, _) = shapeflow::cli::run_pipeline(
        &d.path().join("p.yaml"),
        &[],
        &common::registry(),
        shapeflow::cli::RunSettings {
            cache: Some(d.path().join("cache")),
            runs: d.path().join("runs"),
            slots: vec![("shared-gpu".into(), 2)],
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.ok(), "both holders must run together:\n{}", r.table());
}

#[test]
fn gather_inputs_and_case_selection() {
    let d = tempfile::tempdir().unwrap();
    let text = "stages:
  src: {plugin: numbers, params: {n: 8}}
  model: {plugin: sum, after: [src]}
  infer: {plugin: add, after: [src, model], params: {only_split: test}}
";
    write(d.path(), "p.yaml", text);
    let r = run_in(d.path(), "p.yaml", &[]);
    assert!(r.ok(), "{}", r.table());
    // Test split = cases 3 and 7.
    assert_eq!(counts(&r, "infer", "default"), (2, 0));
    assert_eq!(counts(&r, "model", "default"), (1, 0));
}

// ---------- real processes ----------

fn object_count(cache: &Path) -> usize {
    std::fs::read_dir(cache.join("objects"))
        .map(|d| {
            d.flatten()
                .map(|s| std::fs::read_dir(s.path()).map(|f| f.count()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

const SLOW: &str = "name: slow
stages:
  src:  {plugin: numbers, params: {n: 40}}
  work: {plugin: add, after: [src], params: {add: 1, sleep_ms: 60}}
  total: {plugin: sum, after: [work]}
";

#[test]
fn kill_9_mid_run_then_rerun_completes_cleanly() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "p.yaml", SLOW);
    let mut c = spawn_child(d.path(), &["run", "p.yaml", "--cache", "cache", "-j", "2"]);
    let t0 = Instant::now();
    while object_count(&d.path().join("cache")) < 50 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "child made no progress"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    c.kill().unwrap(); // SIGKILL
    c.wait().unwrap();
    let out = run_child(d.path(), &["run", "p.yaml", "--cache", "cache"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        !t.contains(" 0 from cache"),
        "the rerun should reuse finished items: {t}"
    );
    let out = run_child(d.path(), &["cache", "--cache", "cache", "verify"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains(" 0 corrupt, 0 missing"), "{t}");
    let out = run_child(d.path(), &["run", "p.yaml", "--cache", "cache"]);
    assert!(text(&out).contains("\n0 computed"), "{}", text(&out));
}

#[test]
fn ctrl_c_stops_cleanly_and_rerun_continues() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "p.yaml", SLOW);
    let c = spawn_child(d.path(), &["run", "p.yaml", "--cache", "cache", "-j", "2"]);
    let t0 = Instant::now();
    while object_count(&d.path().join("cache")) < 45 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "child made no progress"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe {
        libc::kill(c.id() as i32, libc::SIGINT);
    }
    let out = c.wait_with_output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(130), "{t}");
    assert!(t.contains("cancelled"), "{t}");
    let out = run_child(d.path(), &["cache", "--cache", "cache", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = run_child(d.path(), &["run", "p.yaml", "--cache", "cache"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Its items wait for the file `gate`, which the test creates once the refused and the
/// waiting runs have met the first's lock, however loaded the machine.
const SLOWER: &str = "name: slow
stages:
  src:  {plugin: numbers, params: {n: 40}}
  work: {plugin: add, after: [src], params: {add: 1, hold_until: gate}}
  total: {plugin: sum, after: [work]}
";

#[test]
fn two_runs_on_one_cache_wait_or_refuse_with_a_clear_message() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "p.yaml", SLOWER);
    let first = spawn_child(d.path(), &["run", "p.yaml", "--cache", "cache", "-j", "2"]);
    let owner = d.path().join("cache/LOCK.owner");
    let t0 = Instant::now();
    while !owner.exists() {
        assert!(t0.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(10));
    }
    let refused = run_child(
        d.path(),
        &["run", "p.yaml", "--cache", "cache", "--no-wait"],
    );
    let t = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{t}");
    assert!(
        t.contains(&format!("in use by process {}", first.id())),
        "{t}"
    );
    // The first run holds its items until the waiter says it waits (not a race with the
    // first run's sleeps on a loaded machine).
    let said = d.path().join("waiter.err");
    let waiter = child(d.path(), &["run", "p.yaml", "--cache", "cache"])
        .stderr(std::fs::File::create(&said).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !std::fs::read_to_string(&said)
        .unwrap_or_default()
        .contains("waiting for it to finish")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the waiter never waited"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::write(d.path().join("gate"), b"").unwrap();
    let a = first.wait_with_output().unwrap();
    let b = waiter.wait_with_output().unwrap();
    assert_eq!(a.status.code(), Some(0), "{}", text(&a));
    let tb = format!("{}{}", text(&b), std::fs::read_to_string(&said).unwrap());
    assert_eq!(b.status.code(), Some(0), "{tb}");
    assert!(tb.contains("waiting for it to finish"), "{tb}");
    assert!(
        tb.contains("\n0 computed"),
        "the second run reuses the first's work: {tb}"
    );
    let out = run_child(d.path(), &["cache", "--cache", "cache", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn cli_validate_reports_file_line_column() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "bad.yaml", "stages:\n  s: {plugin: numbrs}\n");
    let out = run_child(d.path(), &["validate", "bad.yaml"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("bad.yaml:2:15: stage `s`: unknown stage `numbrs` (did you mean `numbers`?)"),
        "{t}"
    );
    write(d.path(), "good.yaml", CHAIN);
    let out = run_child(d.path(), &["validate", "good.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn cli_rejects_bad_slots() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "good.yaml", CHAIN);
    for bad in ["gpu=0", "gpu", "gpu=two", "=2"] {
        let out = run_child(d.path(), &["run", "good.yaml", "--slots", bad]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{bad}: {t}");
        assert!(t.contains("--slots") && t.contains(bad), "{bad}: {t}");
    }
    let out = run_child(d.path(), &["run", "good.yaml", "--slots", "gpu=2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn manifest_records_config_keys_and_statuses() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "p.yaml",
        &format!("{CHAIN}variants:\n  x: {{b.add: 1}}\n  y: {{b.add: 2}}\n"),
    );
    let (_, manifest) = run_pipeline(
        &d.path().join("p.yaml"),
        &["a.add=5".to_string()],
        &registry(),
        RunSettings {
            cache: Some(d.path().join("cache")),
            runs: d.path().join("runs"),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(manifest.starts_with(d.path().join("runs")));
    assert!(manifest
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .ends_with("-chain"));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(m["variants"]["x"]["b"]["params"]["add"], 1.0);
    assert_eq!(m["variants"]["y"]["b"]["params"]["add"], 2.0);
    assert_eq!(m["variants"]["y"]["a"]["params"]["add"], 5.0);
    assert_eq!(m["overrides"][0], "a.add=5");
    assert_eq!(m["ok"], true);
    let nodes = m["nodes"].as_array().unwrap();
    let b = nodes.iter().find(|n| n["stage"] == "b").unwrap();
    assert_eq!(b["keys"].as_object().unwrap().len(), 6);
    assert_eq!(b["report"]["status"]["status"], "done");
}

#[test]
fn cache_commands_report_and_maintain() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "p.yaml", CHAIN);
    run_in(d.path(), "p.yaml", &[]);
    let out = run_child(d.path(), &["cache", "--cache", "cache", "stats"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    for stage in ["src", "a", "b", "total", "side"] {
        assert!(
            t.lines().any(|l| l.starts_with(stage)),
            "{stage} missing from:\n{t}"
        );
    }
    assert!(
        t.lines()
            .any(|l| l.starts_with("total") && l.contains(" 25 ")),
        "{t}"
    );
    // Lose the index: repair adopts every object again, and nothing is recomputed.
    std::fs::remove_dir_all(d.path().join("cache/index")).unwrap();
    let out = run_child(d.path(), &["cache", "--cache", "cache", "repair"]);
    assert!(
        text(&out).contains("adopted 25 orphan objects"),
        "{}",
        text(&out)
    );
    let r = run_in(d.path(), "p.yaml", &[]);
    assert_eq!(r.computed(), 0, "{}", r.table());
    // gc down to nothing evicts everything; the next run recomputes, and says why.
    let out = run_child(
        d.path(),
        &["cache", "--cache", "cache", "gc", "--max-size", "0"],
    );
    assert!(text(&out).contains("removed 25 entries"), "{}", text(&out));
    let out = run_child(d.path(), &["plan", "p.yaml", "--cache", "cache"]);
    assert!(text(&out).contains("not in cache (6)"), "{}", text(&out));
    let out = run_child(
        d.path(),
        &["cache", "--cache", "cache", "gc", "--max-size", "lots"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

// ---------- typed inputs: wiring checked at validate, before any work ----------

/// The real stages, miswired: `edt-sdm` given a model, `train` given no SDMs, `infer` told
/// to read its cases from the SDM stage. Each fails at validate with file:line:col.
const WIRED: &str = "stages:
  load: {plugin: load, params: {format: phantom, cases: 2}}
  sdm: {plugin: edt-sdm, after: [load]}
  augment: {stage: augment, after: [load, sdm]}
  train: {plugin: train, after: [load, sdm, augment]}
  infer: {plugin: infer, after: [load, train]}
";

/// 1-based (line, column) of the first `needle` in `text`.
fn at(text: &str, needle: &str) -> (u64, u64) {
    let i = text.find(needle).expect("needle in text");
    let line = text[..i].matches('\n').count() as u64 + 1;
    let col = (i - text[..i].rfind('\n').map(|j| j + 1).unwrap_or(0)) as u64 + 1;
    (line, col)
}

#[test]
fn correct_wiring_validates() {
    assert!(
        errors_of(WIRED, &[]).is_empty(),
        "{:#?}",
        errors_of(WIRED, &[])
    );
    // The order under `after` does not matter: ports bind by kind.
    let swapped = WIRED.replace("after: [load, sdm, augment]", "after: [augment, sdm, load]");
    assert!(errors_of(&swapped, &[]).is_empty());
}

#[test]
fn a_stage_given_the_wrong_kind_of_input_fails_at_validate() {
    // train gets no SDMs: the error points at its `after` list.
    let text = WIRED.replace("after: [load, sdm, augment]}", "after: [load, augment]}");
    let (line, col) = at(&text, "load, augment]");
    one_error(
        &text,
        &[],
        ErrorKind::Wiring,
        line,
        col,
        "needs signed distance maps as input `sdms`; its `after` gives `load` (cases",
    );
    // A stage that reads cases given a model.
    let text = format!("{WIRED}  sdm2: {{plugin: edt-sdm, after: [train]}}\n");
    let (line, col) = at(&text, "[train]");
    let col = col + 1;
    one_error(
        &text,
        &[],
        ErrorKind::Wiring,
        line,
        col,
        "needs cases (image + labels) as input `cases`; its `after` gives `train` (a trained model)",
    );
    // A param that names the wrong kind of stage.
    let text = WIRED.replace(
        "infer: {plugin: infer, after: [load, train]}",
        "infer: {plugin: infer, after: [load, sdm, train], params: {cases: sdm}}",
    );
    let (line, col) = at(&text, "sdm}}");
    one_error(
        &text,
        &[],
        ErrorKind::Wiring,
        line,
        col,
        "`cases: sdm` gives signed distance maps, but input `cases` takes cases",
    );
    // A dependency no input takes.
    let text = WIRED.replace(
        "after: [load, sdm, augment]}",
        "after: [load, sdm, augment, load2]}",
    ) + "  load2: {plugin: load, params: {format: phantom, cases: 2}}\n";
    let (line, col) = at(&text, "load2]");
    one_error(
        &text,
        &[],
        ErrorKind::Wiring,
        line,
        col,
        "has no input for `load2`",
    );
}

struct Dup(&'static str);

impl Plugin for Dup {
    fn name(&self) -> &'static str {
        self.0
    }
    fn register(&self, registry: &mut Registry) {
        TestPlugin.register(registry);
    }
}

#[test]
fn registering_a_stage_name_twice_is_an_error_naming_both_plugins() {
    let r = Registry::new().with(&Dup("first")).unwrap();
    let e = r.with(&Dup("second")).err().expect("a duplicate");
    assert_eq!((e.first.as_str(), e.second.as_str()), ("first", "second"));
    assert!(e.to_string().contains("registered twice"), "{e}");
    // The shipped families do not collide.
    shapeflow::default_registry().unwrap();
}

/// Hostile pipeline files fail validation with exit 2 and a message in the user's words,
/// not the YAML library's (issue 18: a 5 MB `name` passed validation and failed at run time
/// with exit 1; duplicate keys spoke of `DuplicateKeyPolicy`).
#[test]
fn hostile_pipeline_files_fail_validation_with_exit_2_in_plain_words() {
    let d = tempfile::tempdir().unwrap();
    let long = format!(
        "name: {}\n{}",
        "x".repeat(5 << 20),
        CHAIN.replace("name:", "old:")
    );
    let cases = [
        ("long.yaml", long, "`name` must be 1 to 64"),
        (
            "slash.yaml",
            CHAIN.replacen("name: chain", "name: ../up", 1),
            "`name` must be",
        ),
        (
            "dup.yaml",
            format!("seed: 1\n{CHAIN}seed: 2\n"),
            "appears twice",
        ),
        (
            "docs.yaml",
            format!("{CHAIN}---\nname: two\n"),
            "more than one YAML document",
        ),
    ];
    for (file, body, needle) in cases {
        write(d.path(), file, &body);
        for args in [
            vec!["validate", file],
            vec!["run", file, "--cache", "cache"],
        ] {
            let cmd = args[0];
            let out = run_child(d.path(), &args);
            let t = text(&out);
            assert_eq!(out.status.code(), Some(2), "{file} {cmd}: {t}");
            assert!(t.contains(needle) && t.contains(file), "{file}: {t}");
            for jargon in ["DuplicateKeyPolicy", "from_str_multiple", "Options"] {
                assert!(!t.contains(jargon), "{file}: {t}");
            }
        }
    }
}

/// Scratch lives in the cache folder; what a killed run left there is removed (and said)
/// by the next run.
#[test]
fn a_killed_runs_scratch_is_removed_by_the_next_run() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "p.yaml", CHAIN);
    let stale = d.path().join("cache/scratch/999999-0/train");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("half.bin"), b"x").unwrap();
    std::fs::create_dir_all(d.path().join("cache/tmp")).unwrap();
    std::fs::write(d.path().join("cache/tmp/blob.0.tmp"), b"x").unwrap();
    let out = run_child(d.path(), &["run", "p.yaml", "--cache", "cache"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("removed 2 temporary files and scratch folders"),
        "{t}"
    );
    let left: Vec<_> = std::fs::read_dir(d.path().join("cache/scratch"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        std::fs::read_dir(d.path().join("cache/tmp"))
            .unwrap()
            .count(),
        0
    );
}

/// `pipeline inspect` on OpenKBP's 32 validation CTs names the two "SpinalCord" contours
/// that cover the whole back of the neck (`pt_215`, `pt_216`: 478 and 543 cm³, about 20
/// times the others'), and no other contour; warnings leave the exit status 0. With
/// `load.not_contoured` naming them they are absent (the cases' other organs kept), nothing
/// is flagged, and only those two cases recompute; a case or organ that does not exist
/// there is an error naming the field.
#[test]
fn inspect_names_openkbp_contours_far_from_their_organs_volume() {
    let d = tempfile::tempdir().unwrap();
    let pipeline = |extra: &str| {
        format!(
            "name: check\nstages:\n  load: {{stage: load, params: {{format: organ-files, \
             root: {}, image: ct.nii.gz, organs: [Brainstem, SpinalCord, RightParotid, \
             LeftParotid, Esophagus, Larynx, Mandible], folders: {{validation: test}}{extra}}}}}\n",
            shared("openkbp").display()
        )
    };
    let inspect = |extra: &str| -> (Option<i32>, String, serde_json::Value) {
        write(d.path(), "p.yaml", &pipeline(extra));
        let out = run_child(d.path(), &["inspect", "p.yaml", "--json"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let j = stdout
            .find("[\n  {")
            .map(|at| serde_json::from_str(&stdout[at..]).unwrap())
            .unwrap_or_default();
        (out.status.code(), text(&out), j)
    };
    let flagged = |j: &serde_json::Value| -> Vec<(String, String, f64)> {
        j[0]["organ_table"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| {
                row["volume_outliers"].as_array().unwrap().iter().map(|o| {
                    (
                        row["organ"].as_str().unwrap().to_string(),
                        o["case"].as_str().unwrap().to_string(),
                        o["ratio"].as_f64().unwrap(),
                    )
                })
            })
            .collect()
    };
    let (code, t, j) = inspect("");
    assert_eq!(code, Some(0), "{t}");
    assert_eq!(j[0]["cases"], 32, "{t}");
    let found = flagged(&j);
    let names: Vec<(&str, &str)> = found
        .iter()
        .map(|(o, c, _)| (o.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        names,
        [("SpinalCord", "pt_215"), ("SpinalCord", "pt_216")],
        "{found:?}"
    );
    assert!(found.iter().all(|f| f.2 > 15.0), "{found:?}");
    let warnings = j[0]["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .unwrap()
            .starts_with("SpinalCord: 2 contour(s) far from the median volume of 32 cases")),
        "{warnings:?}"
    );
    let cord = |j: &serde_json::Value| j[0]["organ_table"][1].clone();
    assert_eq!(
        (cord(&j)["present"].as_u64(), cord(&j)["absent"].as_u64()),
        (Some(32), Some(0))
    );
    let brainstems = j[0]["organ_table"][0]["present"].clone();

    // Read as not contoured: absent there, the rest of those cases as before; after a
    // run without it, only those two cases' items recompute.
    write(d.path(), "p.yaml", &pipeline(""));
    let out = run_child(d.path(), &["run", "p.yaml", "--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    write(
        d.path(),
        "p.yaml",
        &pipeline(", not_contoured: {SpinalCord: [pt_215, pt_216]}"),
    );
    let out = run_child(d.path(), &["plan", "p.yaml"]);
    let t = text(&out);
    let row: Vec<&str> = t
        .lines()
        .find(|l| l.starts_with("load "))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row.get(1..4), Some(&["32", "30", "2"][..]), "{t}");
    let (code, t, j) = inspect(", not_contoured: {SpinalCord: [pt_215, pt_216]}");
    assert_eq!(code, Some(0), "{t}");
    assert!(flagged(&j).is_empty(), "{t}");
    assert_eq!(
        (cord(&j)["present"].as_u64(), cord(&j)["absent"].as_u64()),
        (Some(30), Some(2))
    );
    assert_eq!(j[0]["organ_table"][0]["present"], brainstems);

    let (code, t, _) = inspect(", not_contoured: {SpinalCord: [pt_299]}");
    assert_ne!(code, Some(0), "{t}");
    assert!(
        t.contains("not_contoured.SpinalCord: no labelled case `pt_299` in the dataset"),
        "{t}"
    );
    let (code, t, _) = inspect(", not_contoured: {Cord: [pt_215]}");
    assert_ne!(code, Some(0), "{t}");
    assert!(
        t.contains("not_contoured.Cord, case pt_215: no organ `Cord` in the case"),
        "{t}"
    );
}

/// `pipeline inspect` on a deliberately broken copy of four real hippocampus cases names
/// each problem and exits 1: a label on another grid, a label value outside the table, a
/// duplicated case; on the intact cases it reports none and exits 0.
#[test]
fn inspect_names_each_problem_of_a_broken_dataset() {
    use shapeflow_core::VoxelData;
    let src = shared("hippocampus");
    let d = tempfile::tempdir().unwrap();
    let ds = d.path().join("ds");
    for sub in ["imagesTr", "labelsTr"] {
        std::fs::create_dir_all(ds.join(sub)).unwrap();
    }
    let ids = ["hippocampus_001", "hippocampus_003", "hippocampus_004"];
    let link = |from: &str, to: &str| {
        std::os::unix::fs::symlink(src.join(from), ds.join(to)).unwrap();
    };
    for id in ids {
        link(
            &format!("imagesTr/{id}.nii.gz"),
            &format!("imagesTr/{id}.nii.gz"),
        );
        link(
            &format!("labelsTr/{id}.nii.gz"),
            &format!("labelsTr/{id}.nii.gz"),
        );
    }
    let entries = |ids: &[&str]| -> String {
        ids.iter()
            .map(|i| {
                format!(r#"{{"image": "./imagesTr/{i}.nii.gz", "label": "./labelsTr/{i}.nii.gz"}}"#)
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let json = |ids: &[&str]| {
        let text = format!(
            r#"{{"labels": {{"0": "background", "1": "Anterior", "2": "Posterior"}}, "training": [{}]}}"#,
            entries(ids)
        );
        std::fs::write(ds.join("dataset.json"), text).unwrap();
    };
    json(&ids);
    write(
        d.path(),
        "p.yaml",
        "name: check\nstages:\n  load: {stage: load, params: {format: msd, root: ds, split: none}}\n",
    );
    let out = run_child(d.path(), &["inspect", "p.yaml"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("3 cases") && t.contains("None found"), "{t}");

    // Break it: a duplicated case, a label value 3, a label on another grid.
    link(
        "imagesTr/hippocampus_001.nii.gz",
        "imagesTr/hippocampus_901.nii.gz",
    );
    link(
        "labelsTr/hippocampus_001.nii.gz",
        "labelsTr/hippocampus_901.nii.gz",
    );
    let label = shapeflow_formats::read(&src.join("labelsTr/hippocampus_003.nii.gz")).unwrap();
    let mut v: Vec<u8> = label.to_f32().iter().map(|&x| x as u8).collect();
    v[0] = 3;
    std::fs::remove_file(ds.join("labelsTr/hippocampus_003.nii.gz")).unwrap();
    shapeflow_formats::write(
        &label.with_data(VoxelData::U8(v)).unwrap(),
        &ds.join("labelsTr/hippocampus_003.nii.gz"),
    )
    .unwrap();
    let mut small =
        shapeflow_core::Volume::new([5, 5, 5], label.spacing, VoxelData::U8(vec![0; 125])).unwrap();
    small.affine = label.affine;
    std::fs::remove_file(ds.join("labelsTr/hippocampus_004.nii.gz")).unwrap();
    shapeflow_formats::write(&small, &ds.join("labelsTr/hippocampus_004.nii.gz")).unwrap();
    json(&[
        "hippocampus_001",
        "hippocampus_003",
        "hippocampus_004",
        "hippocampus_901",
    ]);
    let out = run_child(d.path(), &["inspect", "p.yaml"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    for needle in [
        "case `hippocampus_004` cannot be read",
        "case `hippocampus_003`: label values not in the organ table (read as background): 3 (1 voxels)",
        "cases `hippocampus_001`, `hippocampus_901` have the same image",
    ] {
        assert!(t.contains(needle), "{needle}: {t}");
    }
    let out = run_child(d.path(), &["inspect", "p.yaml", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let at = stdout.find("[\n  {").expect("a JSON list on stdout");
    let j: serde_json::Value = serde_json::from_str(&stdout[at..]).unwrap();
    assert_eq!(j[0]["errors"].as_array().unwrap().len(), 3, "{j}");
    assert_eq!(j[0]["cases"], 4);
}
