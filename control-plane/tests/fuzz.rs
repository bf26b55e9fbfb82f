//! Property test over the policy and database bodies: whatever JSON arrives — valid, nearly
//! valid, or nonsense — the answer is a 2xx or a 4xx with the error shape, never a 5xx or a
//! panic, and the audit chain stays intact. Runs against the router in-process (no TLS) so
//! hundreds of cases take well under a second each.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bulwark_control_plane::api;
use bulwark_control_plane::state::AppState;
use bulwark_control_plane::store::Store;
use proptest::prelude::*;
use serde_json::{json, Value};
use tower::ServiceExt;

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-5i64..4000).prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec![
            "daily",
            "hourly",
            "weekly",
            "monthly",
            "every 5m",
            "every 15m",
            "every 2h",
            "*/5 * * * *",
            "0 3 * * *",
            "61 * * * *",
            "01:00-05:00",
            "22:00-02:00",
            "00:00-24:00",
            "25:00-01:00",
            "low",
            "normal",
            "critical",
            "urgent",
            "postgresql",
            "mysql",
            "mariadb",
            "sqlite",
            "etcd",
            "cassandra",
            "files",
            "oracle",
            "logical",
            "physical",
            "orders",
            "alpha",
            "UTC",
            "Mars/Base",
            "/var/lib/x.db",
            "http://127.0.0.1:2379",
            "",
            "\u{0}",
            "ü",
        ])
        .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const POLICY_KEYS: &[&str] = &[
    "db_identifier",
    "db_type",
    "schedule",
    "retention",
    "timezone",
    "keep_last",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
    "backup_method",
    "pitr",
    "storage_id",
    "verify_after_backup",
    "require_restore_approval",
    "enabled",
];
const DATABASE_KEYS: &[&str] = &[
    "id",
    "workspace_id",
    "type",
    "agent_id",
    "connection",
    "secrets",
    "labels",
    "description",
];

/// A valid body with some fields replaced by arbitrary values, some removed, and maybe a stray key.
fn mutated(base: Value, keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    (
        prop::collection::vec((prop::sample::select(keys), value()), 0..4),
        prop::collection::vec(prop::sample::select(keys), 0..2),
        prop::option::of((".{1,8}", value())),
        prop::option::of((
            prop::sample::select(vec![
                "frequency",
                "preferred_window",
                "priority",
                "period_days",
                "min_snapshots",
                "host",
                "port",
                "path",
                "endpoints",
            ]),
            leaf(),
        )),
    )
        .prop_map(move |(replace, remove, extra, nested)| {
            let mut body = base.clone();
            let obj = body.as_object_mut().unwrap();
            for (k, v) in replace {
                obj.insert(k.to_string(), v);
            }
            for k in remove {
                obj.remove(k);
            }
            if let Some((k, v)) = extra {
                obj.insert(k, v);
            }
            if let Some((k, v)) = nested {
                for parent in ["schedule", "retention", "connection"] {
                    if let Some(Value::Object(o)) = obj.get_mut(parent) {
                        if o.contains_key(k) {
                            o.insert(k.to_string(), v.clone());
                        }
                    }
                }
            }
            body
        })
}

struct Fixture {
    app: axum::Router,
    token: String,
    _dir: tempfile::TempDir,
    store: Store,
}

fn fixture(rt: &tokio::runtime::Runtime) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, token) = bulwark_control_plane::cli::try_bootstrap(dir.path(), "root")
        .unwrap()
        .unwrap();
    let store = Store::open(dir.path()).unwrap();
    let secrets = bulwark_control_plane::secrets::SecretKey::load_or_create(dir.path()).unwrap();
    let app = api::router(AppState::new(store.clone(), secrets, 64 * 1024));
    let f = Fixture {
        app,
        token,
        _dir: dir,
        store,
    };
    rt.block_on(async {
        for (path, body) in [
            ("/api/v1/workspaces", json!({"id": "alpha", "name": "A", "plan": "shared", "quota_bytes": 1000, "min_retention_days": 7})),
            ("/api/v1/databases", json!({"id": "orders", "workspace_id": "alpha", "type": "postgresql", "connection": {"host": "db"}})),
        ] {
            let (status, v) = send(&f, "POST", path, body.to_string()).await;
            assert_eq!(status, StatusCode::CREATED, "{v}");
        }
    });
    f
}

async fn send(f: &Fixture, method: &str, path: &str, body: String) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {}", f.token))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = f.app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn check(status: StatusCode, v: &Value, body: &Value) -> Result<(), TestCaseError> {
    prop_assert!(!status.is_server_error(), "{status} for {body}: {v}");
    if status.is_client_error() {
        prop_assert!(
            v["error"]["code"].is_string()
                && v["error"]["message"].is_string()
                && v["error"]["details"].is_array(),
            "{status} {v}"
        );
    }
    Ok(())
}

#[test]
fn policy_and_database_bodies_never_cause_a_server_error() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let f = fixture(&rt);
    let policy = json!({"db_identifier": "orders", "db_type": "postgresql",
        "schedule": {"frequency": "daily", "preferred_window": "01:00-05:00", "priority": "normal"},
        "retention": {"period_days": 30, "min_snapshots": 7}});
    let database = json!({"id": "db1", "workspace_id": "alpha", "type": "sqlite", "connection": {"path": "/x.db"}});
    let config = ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(p in mutated(policy, POLICY_KEYS), d in mutated(database, DATABASE_KEYS), raw in ".{0,64}")| {
        rt.block_on(async {
            for (method, path, body) in [
                ("POST", "/api/v1/policies/validate", p.to_string()),
                ("POST", "/api/v1/policies", p.to_string()),
                ("POST", "/api/backup/policies", p.to_string()),
                ("POST", "/api/v1/databases", d.to_string()),
                ("PUT", "/api/v1/databases/orders", d.to_string()),
                ("POST", "/api/v1/policies", raw.clone()),
            ] {
                let (status, v) = send(&f, method, path, body.clone()).await;
                let shown: Value = serde_json::from_str(&body).unwrap_or(Value::String(body.clone()));
                check(status, &v, &shown)?;
            }
            Ok::<(), TestCaseError>(())
        })?;
    });
    // Whatever was accepted was audited, and the chain still verifies.
    let report = bulwark_control_plane::store::audit::verify(&f.store.read().unwrap()).unwrap();
    assert!(report.ok, "{report:?}");
}
