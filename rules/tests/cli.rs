//! The `tollgate-rules` binary end to end: the offline commands on the demo and on broken or
//! altered sources, and the online commands against a stub control plane on loopback.
#![cfg(feature = "cli")]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

const DEMO: &str = tollgate_rules::DEMO_SOURCE;

/// A fresh scratch directory per test, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tollgate-rules-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate-rules"));
    for a in args {
        cmd.arg(a.as_ref());
    }
    for var in [
        "TOLLGATE_CONTROL_PLANE_URL",
        "TOLLGATE_ADMIN_TOKEN",
        "TOLLGATE_ACTOR",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("USER", "tester");
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("runs");
    Run {
        code: status.code().expect("exited"),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$(&$a as &dyn AsRef<std::ffi::OsStr>),*] };
}

fn assert_code(r: &Run, code: i32) {
    assert_eq!(
        r.code, code,
        "exit code\n--- stdout\n{}\n--- stderr\n{}",
        r.stdout, r.stderr
    );
}

/// The demo with `exports` taken from `pro`, and its tests adjusted so it still compiles.
fn demo_without_pro_exports() -> String {
    let edits = [
        ("    grant exports\n", ""),
        (
            "expect sso allowed reason granted_by_plan, exports allowed,",
            "expect sso allowed reason granted_by_plan,",
        ),
        (
            "expect exports allowed reason granted_by_plan",
            "expect exports denied reason denied_not_in_plan",
        ),
        (
            "expect exports denied reason denied_past_due, sso allowed",
            "expect exports denied, sso allowed",
        ),
    ];
    let mut text = DEMO.to_string();
    for (from, to) in edits {
        assert!(text.contains(from), "{from}");
        text = text.replacen(from, to, 1);
    }
    text
}

#[test]
fn check_accepts_the_demo_and_shows_carets_for_a_broken_file() {
    let s = Scratch::new("check");
    let demo = s.write("demo.tg", DEMO);
    let r = run(args!["check", demo]);
    assert_code(&r, 0);
    assert!(
        r.stdout
            .contains("ok: 4 features, 3 plans, 1 add-on, 3 rules, 10 tests; 0 warnings"),
        "{}",
        r.stdout
    );

    let broken = s.write(
        "broken.tg",
        "feature sso: bool\nplan pro \"Pro\" {\n    price 100 USD per month\n    grant sos\n}\n",
    );
    let r = run(args!["check", broken]);
    assert_code(&r, 1);
    assert!(r.stderr.contains("error[unknown_feature]"), "{}", r.stderr);
    assert!(r.stderr.contains("4 |     grant sos\n"), "{}", r.stderr);
    assert!(r.stderr.contains("  |           ^^^\n"), "{}", r.stderr);
    assert!(r.stderr.contains("1 error, 0 warnings"), "{}", r.stderr);
}

#[test]
fn test_reports_each_test_and_fails_on_a_failing_one() {
    let s = Scratch::new("test");
    let demo = s.write("demo.tg", DEMO);
    let r = run(args!["test", demo]);
    assert_code(&r, 0);
    assert!(r.stdout.contains("test \"free\" ... ok"), "{}", r.stdout);
    assert!(r.stdout.contains("10 of 10 tests passed"), "{}", r.stdout);

    let failing = s.write(
        "failing.tg",
        &DEMO.replace(
            "expect seats allowed limit 20",
            "expect seats allowed limit 25",
        ),
    );
    let r = run(args!["test", failing]);
    assert_code(&r, 1);
    assert!(
        r.stdout
            .contains("test \"extra seats add five per pack\" ... FAILED"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("expected seats limit 25, got 20 (granted_by_plan)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("9 of 10 tests passed, 1 failed"),
        "{}",
        r.stderr
    );
    // compile refuses it too.
    let r = run(args!["compile", failing, "-o", s.path("x.bundle")]);
    assert_code(&r, 1);
    assert!(r.stderr.contains("error[test_failed]"), "{}", r.stderr);
    assert!(!s.path("x.bundle").exists());
}

#[test]
fn compile_keygen_sign_inspect_and_diff() {
    let s = Scratch::new("flow");
    let demo = s.write("demo.tg", DEMO);
    let variant = s.write("variant.tg", &demo_without_pro_exports());
    let (old_u, new_u) = (s.path("old.unsigned"), s.path("new.unsigned"));
    let r = run(args!["compile", demo, "-o", old_u, "--version", "5"]);
    assert_code(&r, 0);
    assert!(r.stdout.contains("version 5"), "{}", r.stdout);
    assert_code(
        &run(args!["compile", variant, "-o", new_u, "--version", "6"]),
        0,
    );

    let keys = s.path("keys");
    let r = run(args!["keygen", "--key-id", "ops-1", "-o", keys]);
    assert_code(&r, 0);
    let (secret, public) = (keys.join("ops-1.key"), keys.join("ops-1.pub"));
    assert!(public.exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // An existing key is never overwritten.
    assert_code(&run(args!["keygen", "--key-id", "ops-1", "-o", keys]), 2);

    let signed = s.path("old.bundle");
    let r = run(args!["sign", old_u, "--key", secret, "-o", signed]);
    assert_code(&r, 0);
    assert!(r.stdout.contains("signed by `ops-1`"), "{}", r.stdout);

    let r = run(args!["inspect", signed, "--trusted-key", public]);
    assert_code(&r, 0);
    for expected in [
        "version    5",
        "pro                      \"Pro\": 2900 USD per month, trial 14 days",
        "grants: sso, exports, seats = 10, api_calls = 100000",
        "extra_seats",
        "\"late exports\"",
        "\"support override beats the plan\"",
        "module.wasm",
        "program.postcard",
        "signature  verified (key `ops-1`)",
    ] {
        assert!(r.stdout.contains(expected), "{expected}\n{}", r.stdout);
    }
    // Without keys the signature is named but not checked; with another key it fails.
    let r = run(args!["inspect", signed]);
    assert_code(&r, 0);
    assert!(r.stdout.contains("not checked"), "{}", r.stdout);
    assert_code(&run(args!["keygen", "--key-id", "other", "-o", keys]), 0);
    let r = run(args![
        "inspect",
        signed,
        "--trusted-key",
        keys.join("other.pub")
    ]);
    assert_code(&r, 1);
    assert!(r.stdout.contains("NOT VERIFIED"), "{}", r.stdout);
    // A tampered file is refused.
    let mut bytes = std::fs::read(&signed).expect("read");
    let last = bytes.len() - 20;
    bytes[last] ^= 1;
    let tampered = s.path("tampered.bundle");
    std::fs::write(&tampered, &bytes).expect("write");
    let r = run(args!["inspect", tampered, "--trusted-key", public]);
    assert_code(&r, 1);
    assert!(r.stderr.contains("does not match"), "{}", r.stderr);

    let r = run(args!["diff", signed, new_u]);
    assert_code(&r, 0);
    assert!(r.stdout.contains("version 5 -> 6"), "{}", r.stdout);
    assert!(r.stdout.contains("pro: exports removed"), "{}", r.stdout);
    assert!(
        r.stdout.contains(
            "test \"pro\" (old): exports: allowed (granted_by_plan) -> denied (denied_not_in_plan)"
        ),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("sso:"),
        "only exports changes\n{}",
        r.stdout
    );
    let r = run(args!["diff", signed, signed]);
    assert_code(&r, 0);
    assert!(r.stdout.contains("no differences"), "{}", r.stdout);
}

#[test]
fn usage_errors_exit_2_and_every_command_has_help() {
    assert_code(&run(args![]), 2);
    assert_code(&run(args!["frobnicate"]), 2);
    let r = run(args!["activate", "5", "--canary", "101"]);
    assert_code(&r, 2);
    assert!(r.stderr.contains("0..=100"), "{}", r.stderr);
    assert_code(&run(args!["check", "/nonexistent/x.tg"]), 2);
    let s = Scratch::new("usage");
    assert_code(
        &run(args!["keygen", "--key-id", "no spaces", "-o", s.path("k")]),
        2,
    );
    // Online commands need a token.
    let r = run(args!["status"]);
    assert_code(&r, 2);
    assert!(r.stderr.contains("TOLLGATE_ADMIN_TOKEN"), "{}", r.stderr);
    for cmd in [
        "check", "test", "compile", "keygen", "sign", "inspect", "diff", "deploy", "activate",
        "promote", "rollback", "status",
    ] {
        let r = run(args![cmd, "--help"]);
        assert_code(&r, 0);
        assert!(
            r.stdout.contains("Usage: tollgate-rules"),
            "{cmd}: {}",
            r.stdout
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Online commands against a stub control plane.

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: String,
    actor: String,
    content_type: String,
    body: Vec<u8>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

async fn stub(
    axum::extract::State(log): axum::extract::State<Log>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    log.lock().expect("log").push(Seen {
        method: method.to_string(),
        path: uri.path().to_string(),
        authorization: header("authorization"),
        actor: header("tollgate-actor"),
        content_type: header("content-type"),
        body: body.to_vec(),
    });
    let json = |status: StatusCode, v: serde_json::Value| {
        let content_type = if status.is_success() {
            "application/json"
        } else {
            "application/problem+json"
        };
        (status, [("content-type", content_type)], v.to_string()).into_response()
    };
    match (method.as_str(), uri.path()) {
        ("POST", "/admin/v1/bundles") => json(
            StatusCode::CREATED,
            serde_json::json!({"version": 5, "key_id": "ops-1", "sha256": "abc"}),
        ),
        ("POST", "/admin/v1/bundles/5/activate") => json(
            StatusCode::OK,
            serde_json::json!({"version": 5, "canary_percent": 10}),
        ),
        ("POST", "/admin/v1/bundles/9/activate") => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({"type": "about:blank", "status": 422,
                "code": "bundle_tests_failed", "detail": "test `pro` failed"}),
        ),
        ("POST", "/admin/v1/bundles/5/promote") => json(
            StatusCode::OK,
            serde_json::json!({"version": 5, "canary_percent": 100}),
        ),
        ("POST", "/admin/v1/bundles/7/promote") => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"code": "unavailable", "detail": "try again"}),
        ),
        ("POST", "/admin/v1/rollback") => {
            json(StatusCode::OK, serde_json::json!({"active_version": 4}))
        }
        ("GET", "/admin/v1/bundles") => json(
            StatusCode::OK,
            serde_json::json!({"bundles": [
                {"version": 5, "state": "canary", "canary_percent": 10},
                {"version": 4, "state": "active", "canary_percent": 100},
            ]}),
        ),
        ("GET", "/admin/v1/edges") => json(
            StatusCode::OK,
            serde_json::json!([{"edge_id": "edge-a", "bundle_version": 4, "healthy": true}]),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"code": "not_found", "detail": "no such route"}),
        ),
    }
}

/// Serves the stub on a loopback port for the life of the test process.
fn start_stub() -> (String, Log) {
    let log: Log = Arc::default();
    let app = axum::Router::new()
        .fallback(stub)
        .with_state(Arc::clone(&log));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    let addr = rx.recv().expect("address");
    (format!("http://{addr}"), log)
}

#[test]
fn online_commands_send_the_right_requests_and_map_problems_to_exit_codes() {
    let (server, log) = start_stub();
    let s = Scratch::new("online");
    let demo = s.write("demo.tg", DEMO);
    let unsigned = s.path("demo.unsigned");
    let signed = s.path("demo.bundle");
    let keys = s.path("keys");
    assert_code(
        &run(args!["compile", demo, "-o", unsigned, "--version", "5"]),
        0,
    );
    assert_code(&run(args!["keygen", "--key-id", "ops-1", "-o", keys]), 0);
    assert_code(
        &run(args![
            "sign",
            unsigned,
            "--key",
            keys.join("ops-1.key"),
            "-o",
            signed
        ]),
        0,
    );
    let remote = |extra: &[&str]| -> Run {
        let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = Vec::new();
        for e in extra {
            a.push(e);
        }
        let tail: [&dyn AsRef<std::ffi::OsStr>; 6] = [
            &"--server",
            &server,
            &"--token",
            &"s3cret",
            &"--actor",
            &"alice",
        ];
        a.extend(tail);
        run(&a)
    };

    let r = remote(&["deploy", signed.to_str().expect("utf-8")]);
    assert_code(&r, 0);
    assert!(r.stdout.contains("sha256"), "{}", r.stdout);
    // An unsigned bundle is not uploaded.
    assert_code(&remote(&["deploy", unsigned.to_str().expect("utf-8")]), 1);

    assert_code(&remote(&["activate", "5", "--canary", "10"]), 0);
    let r = remote(&["activate", "9", "--canary", "10"]);
    assert_code(&r, 1);
    assert!(
        r.stderr
            .contains("error: bundle_tests_failed: test `pro` failed"),
        "{}",
        r.stderr
    );
    assert_code(&remote(&["promote", "5"]), 0);
    let r = remote(&["promote", "7"]);
    assert_code(&r, 3);
    assert!(
        r.stderr.contains("error: unavailable: try again"),
        "{}",
        r.stderr
    );
    assert_code(&remote(&["rollback"]), 0);
    assert_code(&remote(&["rollback", "--to", "4"]), 0);
    let r = remote(&["status"]);
    assert_code(&r, 0);
    assert!(
        r.stdout.contains("version  canary_percent  state"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("edge_id  bundle_version  healthy"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("edge-a"), "{}", r.stdout);

    let seen = log.lock().expect("log").clone();
    let requests: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path.as_str()))
        .collect();
    assert_eq!(
        requests,
        [
            ("POST", "/admin/v1/bundles"),
            ("POST", "/admin/v1/bundles/5/activate"),
            ("POST", "/admin/v1/bundles/9/activate"),
            ("POST", "/admin/v1/bundles/5/promote"),
            ("POST", "/admin/v1/bundles/7/promote"),
            ("POST", "/admin/v1/rollback"),
            ("POST", "/admin/v1/rollback"),
            ("GET", "/admin/v1/bundles"),
            ("GET", "/admin/v1/edges"),
        ]
    );
    assert!(
        seen.iter()
            .all(|s| s.authorization == "Bearer s3cret" && s.actor == "alice")
    );
    assert_eq!(seen[0].content_type, "application/octet-stream");
    assert_eq!(seen[0].body, std::fs::read(&signed).expect("read"));
    let body = |i: usize| -> serde_json::Value {
        serde_json::from_slice(&seen[i].body).expect("json body")
    };
    assert_eq!(body(1), serde_json::json!({"canary_percent": 10}));
    assert_eq!(body(5), serde_json::json!({}));
    assert_eq!(body(6), serde_json::json!({"to_version": 4}));

    // Nobody listening: a network error.
    let r = run(args![
        "status",
        "--server",
        "http://127.0.0.1:1",
        "--token",
        "t"
    ]);
    assert_code(&r, 3);
}

// ---------------------------------------------------------------------------------------------
// What `check` refuses, `compile` refuses, and neither ships an empty or unstorable bundle.

#[test]
fn check_refuses_the_oversized_program_that_compile_refuses() {
    let s = Scratch::new("oversized");
    let mut text: String = (0..=tollgate_rules::wasm::FEATURES_MAX)
        .map(|i| format!("feature f{i}: bool\n"))
        .collect();
    text.push_str("plan p \"P\" { price 1 USD per month grant f0 }\n");
    text.push_str("test \"t\" { given plan = p expect f0 allowed }\n");
    let src = s.write("big.tg", &text);
    let check = run(args!["check", src]);
    assert_code(&check, 1);
    let compile = run(args!["compile", src, "-o", s.path("big.bundle")]);
    assert_code(&compile, 1);
    for r in [&check, &compile] {
        assert!(
            r.stderr.contains(
                "error[program_too_large]: features: 1025 is more than the 1024 a module supports"
            ),
            "{}",
            r.stderr
        );
    }
    assert!(!check.stdout.contains("ok:"), "{}", check.stdout);
    assert!(!s.path("big.bundle").exists());
}

#[test]
fn an_empty_source_is_refused_with_a_code_for_each_missing_part() {
    let s = Scratch::new("empty");
    let src = s.write("empty.tg", "# nothing yet\n");
    for r in [
        run(args!["check", src]),
        run(args!["compile", src, "-o", s.path("empty.bundle")]),
    ] {
        assert_code(&r, 1);
        for code in ["error[no_features]", "error[no_plans]", "error[no_tests]"] {
            assert!(r.stderr.contains(code), "{code}\n{}", r.stderr);
        }
    }
    assert!(!s.path("empty.bundle").exists());
    // Features and plans without a test block are not enough either.
    let untested = s.write(
        "untested.tg",
        "feature sso: bool\nplan pro \"Pro\" { price 1 USD per month grant sso }\n",
    );
    let r = run(args!["check", untested]);
    assert_code(&r, 1);
    assert!(r.stderr.contains("error[no_tests]"), "{}", r.stderr);
    assert!(!r.stderr.contains("error[no_plans]"), "{}", r.stderr);
}

#[test]
fn control_characters_in_names_and_overlong_keys_are_refused_by_check_and_compile() {
    let s = Scratch::new("names");
    let key = "k".repeat(129);
    let src = s.write(
        "names.tg",
        &format!(
            "feature {key}: metered per month\n\
             plan pro \"Pro\0\" {{ price 1 USD per month grant {key} = 5 }}\n\
             addon more \"More\x1b[31m\" {{ price 1 USD per month {key} + 5 }}\n\
             test \"t\" {{ given plan = pro expect {key} limit 5 }}\n"
        ),
    );
    for r in [
        run(args!["check", src]),
        run(args!["compile", src, "-o", s.path("names.bundle")]),
    ] {
        assert_code(&r, 1);
        for expected in [
            "error[invalid_key]",
            "a key is at most 128 bytes, this one 129",
            "error[invalid_name]: plan `pro`: the name contains a control character ('\\0')",
            "error[invalid_name]: add-on `more`: the name contains a control character ('\\u{1b}')",
        ] {
            assert!(r.stderr.contains(expected), "{expected}\n{}", r.stderr);
        }
    }
    assert!(!s.path("names.bundle").exists());
}

#[test]
fn versions_the_control_plane_cannot_store_are_usage_errors() {
    let s = Scratch::new("versions");
    let demo = s.write("demo.tg", DEMO);
    let out = s.path("demo.bundle");
    for bad in ["0", "9223372036854775808", "18446744073709551615"] {
        let r = run(args!["compile", demo, "-o", out, "--version", bad]);
        assert_code(&r, 2);
        assert!(
            r.stderr.contains("is not in 1..=9223372036854775807"),
            "{bad}: {}",
            r.stderr
        );
        assert!(!out.exists());
        // The online commands take versions the same way.
        assert_code(&run(args!["promote", bad, "--token", "t"]), 2);
        assert_code(
            &run(args!["activate", bad, "--canary", "5", "--token", "t"]),
            2,
        );
        assert_code(&run(args!["rollback", "--to", bad, "--token", "t"]), 2);
    }
    let r = run(args![
        "compile",
        demo,
        "-o",
        out,
        "--version",
        "9223372036854775807"
    ]);
    assert_code(&r, 0);
    let r = run(args!["inspect", out]);
    assert!(
        r.stdout.contains("version    9223372036854775807"),
        "{}",
        r.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// A closed stdout (`tollgate-rules status | head`) ends the command quietly.

/// Runs the CLI with a stdout whose reading end is closed before it starts, so its first
/// write fails with EPIPE (as when `head` has exited).
fn run_with_closed_stdout(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Run {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate-rules"));
    for a in args {
        cmd.arg(a.as_ref());
    }
    cmd.env("USER", "tester")
        .stdout(writer)
        .stderr(std::process::Stdio::piped());
    let output = cmd.output().expect("runs");
    Run {
        code: output
            .status
            .code()
            .expect("exited, not killed by a signal"),
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn a_closed_stdout_ends_every_printing_command_quietly_with_its_own_exit_code() {
    let (server, _log) = start_stub();
    let s = Scratch::new("closed-stdout");
    let demo = s.write("demo.tg", DEMO);
    let bundle = s.path("demo.bundle");
    assert_code(
        &run(args!["compile", demo, "-o", bundle, "--version", "5"]),
        0,
    );
    let keys = s.path("keys");
    let failing = s.write(
        "failing.tg",
        &DEMO.replace(
            "expect seats allowed limit 20",
            "expect seats allowed limit 25",
        ),
    );
    let online = |cmd: &str| -> Vec<String> {
        vec![
            cmd.into(),
            "--server".into(),
            server.clone(),
            "--token".into(),
            "t".into(),
        ]
    };
    let mut cases: Vec<(Vec<String>, i32)> = vec![
        (vec!["check".into(), demo.display().to_string()], 0),
        (vec!["test".into(), demo.display().to_string()], 0),
        (vec!["test".into(), failing.display().to_string()], 1),
        (vec!["inspect".into(), bundle.display().to_string()], 0),
        (
            vec![
                "diff".into(),
                bundle.display().to_string(),
                bundle.display().to_string(),
            ],
            0,
        ),
        (
            vec![
                "compile".into(),
                demo.display().to_string(),
                "-o".into(),
                s.path("again.bundle").display().to_string(),
            ],
            0,
        ),
        (
            vec![
                "keygen".into(),
                "--key-id".into(),
                "k1".into(),
                "-o".into(),
                keys.display().to_string(),
            ],
            0,
        ),
        (online("status"), 0),
        (
            [
                vec!["promote".to_string(), "5".into()],
                online("")[1..].to_vec(),
            ]
            .concat(),
            0,
        ),
    ];
    cases.push((vec!["--help".into()], 0));
    for (args, code) in cases {
        let a: Vec<&dyn AsRef<std::ffi::OsStr>> = args
            .iter()
            .map(|a| a as &dyn AsRef<std::ffi::OsStr>)
            .collect();
        let r = run_with_closed_stdout(&a);
        assert!(!r.stderr.contains("panicked"), "{args:?}: {}", r.stderr);
        assert_eq!(r.code, code, "{args:?}: {}", r.stderr);
        if code == 0 {
            assert_eq!(r.stderr, "", "{args:?}: quiet");
        }
    }
    // The commands that write files still wrote them whole.
    assert!(s.path("again.bundle").exists());
    assert!(keys.join("k1.key").exists() && keys.join("k1.pub").exists());
}

// ---------------------------------------------------------------------------------------------
// A folder of `.tg` files is one program.

/// The demo cut into a folder as a team might keep it, in the order the folder sorts:
/// `catalog.tg` (plans and the add-on, using the features of a later file), `features.tg`
/// and `policy/rules.tg` (rules and tests, in a subfolder). Beside them, what a folder read
/// skips: hidden files and folders (broken, so reading them would fail) and other files.
/// Returns the folder and the text of `policy/rules.tg`.
fn demo_folder(s: &Scratch, name: &str, rules_edit: Option<(&str, &str)>) -> (PathBuf, String) {
    let dir = s.path(name);
    let plans = DEMO.find("plan free").expect("plans");
    let rules = DEMO.find("// Order matters").expect("rules");
    let mut rules_text = DEMO[rules..].to_string();
    if let Some((from, to)) = rules_edit {
        assert!(rules_text.contains(from), "{from}");
        rules_text = rules_text.replacen(from, to, 1);
    }
    for (path, text) in [
        ("catalog.tg", &DEMO[plans..rules]),
        ("features.tg", &DEMO[..plans]),
        ("policy/rules.tg", rules_text.as_str()),
        (".draft.tg", "feature broken"),
        (".git/HEAD.tg", "plan {"),
        ("README.md", "feature not: read"),
        ("catalog.tg.bak", "plan {"),
    ] {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
    }
    (dir, rules_text)
}

/// 1-based line of the first `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    text[..text.find(needle).expect("needle")]
        .matches('\n')
        .count()
        + 1
}

#[test]
fn check_test_and_compile_take_a_folder_of_tg_files_as_one_program() {
    let s = Scratch::new("folder");
    let (dir, _) = demo_folder(&s, "demo", None);
    let r = run(args!["check", dir]);
    assert_code(&r, 0);
    assert!(
        r.stdout.contains(&format!(
            "{} (3 files): ok: 4 features, 3 plans, 1 add-on, 3 rules, 10 tests; 0 warnings",
            dir.display()
        )),
        "{}",
        r.stdout
    );
    let r = run(args!["test", dir]);
    assert_code(&r, 0);
    assert!(r.stdout.contains("test \"free\" ... ok"), "{}", r.stdout);
    assert!(r.stdout.contains("10 of 10 tests passed"), "{}", r.stdout);

    // The folder's bundle holds what the file's does.
    let demo = s.write("demo.tg", DEMO);
    let (from_dir, from_file) = (s.path("dir.unsigned"), s.path("file.unsigned"));
    let r = run(args!["compile", dir, "-o", from_dir, "--version", "5"]);
    assert_code(&r, 0);
    assert!(r.stdout.contains("10 tests passed"), "{}", r.stdout);
    assert_code(
        &run(args!["compile", demo, "-o", from_file, "--version", "5"]),
        0,
    );
    let r = run(args!["diff", from_file, from_dir]);
    assert_code(&r, 0);
    assert!(r.stdout.contains("no differences"), "{}", r.stdout);
    // Manifest and module alike; the file, source hashes and program part (whose spans
    // are positions in the source) differ.
    let shown = |bundle: &PathBuf| -> Vec<String> {
        let r = run(args!["inspect", bundle]);
        assert_code(&r, 0);
        r.stdout
            .lines()
            .filter(|l| {
                !["bundle ", "sha256 ", "source ", "created "]
                    .iter()
                    .any(|p| l.starts_with(p))
                    && !l.contains("program.postcard")
            })
            .map(String::from)
            .collect()
    };
    let (a, b) = (shown(&from_file), shown(&from_dir));
    assert!(a.iter().any(|l| l.contains("module.wasm")), "{a:?}");
    assert_eq!(a, b);
}

#[test]
fn a_folder_names_the_file_and_line_of_each_diagnostic() {
    let s = Scratch::new("folder-diags");
    // A failing test in the last file.
    let (dir, rules) = demo_folder(
        &s,
        "failing",
        Some((
            "expect seats allowed limit 20",
            "expect seats allowed limit 25",
        )),
    );
    let rules_tg = dir.join("policy").join("rules.tg");
    let line = line_of(&rules, "test \"extra seats add five per pack\"");
    let r = run(args!["test", dir]);
    assert_code(&r, 1);
    assert!(
        r.stdout.contains(&format!(
            "test \"extra seats add five per pack\" ... FAILED\n    {}:{line}:1: test `extra \
             seats add five per pack`: expected seats limit 25, got 20 (granted_by_plan)\n",
            rules_tg.display()
        )),
        "{}",
        r.stdout
    );
    let r = run(args!["compile", dir, "-o", s.path("x.bundle")]);
    assert_code(&r, 1);
    assert!(
        r.stderr.contains(&format!(
            "{}:{line}:1: error[test_failed]",
            rules_tg.display()
        )),
        "{}",
        r.stderr
    );
    assert!(!s.path("x.bundle").exists());

    // A duplicate across files points at both; a syntax error in one file leaves the errors
    // of the others reported.
    let (dir, _) = demo_folder(&s, "broken", None);
    std::fs::write(
        dir.join("more.tg"),
        "feature seats: limit\nplan gold \"Gold\" {\n    price 1 USD per month\n    grant sos\n}\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("policy").join("open.tg"),
        "rule \"open\" when banned =>\n",
    )
    .expect("write");
    let r = run(args!["check", dir]);
    assert_code(&r, 1);
    let features_line = line_of(DEMO, "feature seats");
    for expected in [
        format!(
            "{}:1:9: error[duplicate_definition]: feature `seats` is defined twice\n",
            dir.join("more.tg").display()
        ),
        format!(
            "= note: first defined at {}:{features_line}:9\n",
            dir.join("features.tg").display()
        ),
        format!(
            "{}:4:11: error[unknown_feature]",
            dir.join("more.tg").display()
        ),
        format!(
            "{}:2:1: error[syntax]: expected `deny`, `grant`, `limit` or `cap`, found end of file",
            dir.join("policy").join("open.tg").display()
        ),
        format!("{} (5 files): 3 errors, 0 warnings", dir.display()),
    ] {
        assert!(r.stderr.contains(&expected), "{expected}\n{}", r.stderr);
    }
}

#[test]
fn an_empty_folder_or_one_without_tg_files_is_a_usage_error() {
    let s = Scratch::new("folder-empty");
    let empty = s.path("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    // Only what a folder read skips.
    let skipped = s.path("skipped");
    for (path, text) in [
        (".draft.tg", "feature sso: bool"),
        (".git/x.tg", "feature sso: bool"),
        ("README.md", "# rules"),
        ("sub/notes.txt", "feature sso: bool"),
    ] {
        let p = skipped.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
    }
    for dir in [&empty, &skipped] {
        let out = s.path("out.bundle");
        for r in [
            run(args!["check", dir]),
            run(args!["test", dir]),
            run(args!["compile", dir, "-o", out]),
        ] {
            assert_code(&r, 2);
            assert!(
                r.stderr.contains(&format!(
                    "error: {} holds no .tg files (names starting with `.` are skipped)",
                    dir.display()
                )),
                "{}",
                r.stderr
            );
            assert_eq!(r.stdout, "");
        }
        assert!(!out.exists());
    }
}
