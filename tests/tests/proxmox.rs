//! `proxmox-client` against the Proxmox VE simulator (`bulwark_tests::pve_sim`): every call and
//! every error class. Proxmox VE itself is simulated — see the module docs of `pve_sim`.

use std::time::Duration;

use bulwark_tests::pve_sim::{Fault, PveSim, PveSimOptions};
use proxmox_client::{
    Client, ContentType, Credentials, Error, Method, Params, StorageCreate, StorageType,
    StorageUpdate, Trust,
};

fn nfs(server: &str) -> StorageType {
    StorageType::Nfs {
        server: server.into(),
        export: "/srv/backup".into(),
        path: None,
        options: Some("vers=4.2".into()),
    }
}

fn cephfs() -> StorageType {
    StorageType::CephFs {
        path: None,
        fs_name: Some("cephfs".into()),
        monhost: vec!["10.0.0.1".into(), "10.0.0.2".into()],
        username: Some("admin".into()),
        keyring: Some("AQBsecretkeyring==".into()),
        subdir: None,
    }
}

fn dir(path: &str) -> StorageType {
    StorageType::Dir {
        path: path.into(),
        shared: None,
        is_mountpoint: Some("yes".into()),
    }
}

fn password_client(sim: &PveSim) -> Client {
    let mut config = sim.client_config();
    config.credentials = Credentials::password(sim.username.clone(), sim.password.clone());
    Client::new(config).unwrap()
}

#[tokio::test]
async fn version_and_nodes() {
    let sim = PveSim::start_default();
    let client = sim.client();
    let v = client.version().await.unwrap();
    assert_eq!(v.release, "9.1");
    assert!(v.version.starts_with("9.1"));
    let nodes = client.nodes().await.unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(names, ["pve1", "pve2"]);
    assert!(nodes.iter().all(|n| n.is_online()));
    assert_eq!(
        nodes[0].ssl_fingerprint.as_deref(),
        Some(sim.fingerprint.as_str())
    );
    assert!(nodes[0].maxmem.unwrap() > nodes[0].mem.unwrap());
    // Token auth: the header was used, no ticket was ever issued.
    assert!(sim.requests().iter().all(|r| r.auth == "token"));
    assert_eq!(sim.tickets_issued(), 0);
}

#[tokio::test]
async fn create_backup_storages_then_read_them_back() {
    let sim = PveSim::start_default();
    let client = sim.client();

    let created = client
        .create_storage(&StorageCreate::backup(
            "bk-ws1",
            nfs("10.0.0.10"),
            &["pve1"],
        ))
        .await
        .unwrap();
    assert_eq!(
        (created.storage.as_str(), created.storage_type.as_str()),
        ("bk-ws1", "nfs")
    );
    client
        .create_storage(&StorageCreate::backup(
            "cfs-ws1",
            cephfs(),
            &["pve1", "pve2"],
        ))
        .await
        .unwrap();
    client
        .create_storage(&StorageCreate::backup(
            "local-bk",
            dir("/srv/bk"),
            &["pve2"],
        ))
        .await
        .unwrap();

    // What went over the wire: form-encoded, lists as one comma string.
    let post = sim
        .requests()
        .into_iter()
        .find(|r| {
            r.method == "POST" && r.params.get("storage").map(String::as_str) == Some("cfs-ws1")
        })
        .unwrap();
    assert_eq!(
        post.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(post.params["nodes"], "pve1,pve2");
    assert_eq!(post.params["monhost"], "10.0.0.1,10.0.0.2");
    assert_eq!(post.params["content"], "backup");

    // Stored as PVE stores it: path filled in, keyring kept apart.
    let cfg = sim.storage("bk-ws1").unwrap();
    assert_eq!(cfg["path"], "/mnt/pve/bk-ws1");
    assert_eq!(cfg["content"], "backup");
    assert_eq!(cfg["nodes"], "pve1");
    assert!(!sim.storage("cfs-ws1").unwrap().contains_key("keyring"));
    assert_eq!(
        sim.storage_secret("cfs-ws1", "keyring").as_deref(),
        Some("AQBsecretkeyring==")
    );

    // get
    let got = client.storage("bk-ws1").await.unwrap();
    assert_eq!(got.storage_type, "nfs");
    assert_eq!(got.server.as_deref(), Some("10.0.0.10"));
    assert_eq!(got.export.as_deref(), Some("/srv/backup"));
    assert_eq!(got.path.as_deref(), Some("/mnt/pve/bk-ws1"));
    assert_eq!(got.options.as_deref(), Some("vers=4.2"));
    assert_eq!(got.nodes, ["pve1"]);
    assert!(got.has_content(ContentType::Backup));
    assert_eq!(got.digest.as_deref(), Some(sim.digest().as_str()));
    assert!(!got.other.contains_key("keyring"));
    let ceph = client.storage("cfs-ws1").await.unwrap();
    assert_eq!(ceph.fs_name.as_deref(), Some("cephfs"));
    assert!(
        !ceph.other.contains_key("keyring"),
        "sensitive options are not returned"
    );

    // list, and list by type
    let all = client.storages(None).await.unwrap();
    let ids: Vec<&str> = all.iter().map(|s| s.storage.as_str()).collect();
    assert_eq!(ids, ["bk-ws1", "cfs-ws1", "local-bk"]);
    let only_dir = client.storages(Some("dir")).await.unwrap();
    assert_eq!(only_dir.len(), 1);
    assert_eq!(only_dir[0].path.as_deref(), Some("/srv/bk"));

    // status per node, with the node restriction
    sim.set_storage_usage("bk-ws1", 1000, 250);
    let st = client.storage_status("pve1", "bk-ws1").await.unwrap();
    assert!(st.active && st.enabled && st.shared);
    assert_eq!((st.total, st.used, st.avail), (1000, 250, 750));
    assert_eq!(st.content, ["backup"]);
    let elsewhere = client.storage_status("pve2", "bk-ws1").await.unwrap();
    assert!(
        !elsewhere.enabled && !elsewhere.active,
        "restricted to pve1"
    );
    assert_eq!(elsewhere.total, 0);
    let local = client.storage_status("pve2", "local-bk").await.unwrap();
    assert!(local.active && !local.shared, "a dir storage is not shared");

    // the node's storage list, filtered by content
    let on_pve1 = client
        .node_storages("pve1", Some(ContentType::Backup), true)
        .await
        .unwrap();
    let ids: Vec<&str> = on_pve1.iter().map(|s| s.storage.as_str()).collect();
    assert_eq!(ids, ["bk-ws1", "cfs-ws1"]);
    assert_eq!(on_pve1[0].used_fraction, Some(0.25));

    // cluster resources: one entry per (node, storage) the storage is enabled on
    let res = client.storage_resources().await.unwrap();
    let mut ids: Vec<&str> = res.iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "storage/pve1/bk-ws1",
            "storage/pve1/cfs-ws1",
            "storage/pve2/cfs-ws1",
            "storage/pve2/local-bk"
        ]
    );
    let bk = res.iter().find(|r| r.id == "storage/pve1/bk-ws1").unwrap();
    assert_eq!((bk.disk, bk.maxdisk), (Some(250), Some(1000)));
    assert_eq!(bk.plugintype.as_deref(), Some("nfs"));
    assert_eq!(bk.status.as_deref(), Some("available"));
    let q = sim
        .requests()
        .into_iter()
        .find(|r| r.path == "/cluster/resources")
        .unwrap();
    assert_eq!(q.params["type"], "storage");
    let everything = client.cluster_resources(None).await.unwrap();
    assert!(everything.iter().any(|r| r.id == "node/pve1"));

    // content
    assert!(client
        .storage_content("pve1", "bk-ws1", None)
        .await
        .unwrap()
        .is_empty());
    let volid = sim.add_backup("bk-ws1", 100, 123_456);
    let items = client
        .storage_content("pve1", "bk-ws1", Some(ContentType::Backup))
        .await
        .unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].volid, volid);
    assert_eq!((items[0].size, items[0].vmid), (123_456, Some(100)));
    assert!(client
        .storage_content("pve1", "bk-ws1", Some(ContentType::Iso))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn rbd_holds_images_only() {
    let sim = PveSim::start_default();
    let client = sim.client();
    let rbd = StorageType::Rbd {
        pool: Some("rbd".into()),
        monhost: vec![],
        username: None,
        keyring: None,
        krbd: Some(false),
        namespace: None,
    };
    // Asking for backups on RBD is refused before sending (PVE would silently drop it).
    let err = client
        .create_storage(&StorageCreate::backup("rbd1", rbd.clone(), &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Parameter { errors, .. } if errors.contains_key("content")),
        "{err}"
    );
    assert_eq!(sim.count("POST", "/storage"), 0);
    let req = StorageCreate {
        content: vec![ContentType::Images],
        ..StorageCreate::backup("rbd1", rbd, &[])
    };
    client.create_storage(&req).await.unwrap();
    assert_eq!(sim.storage("rbd1").unwrap()["krbd"], "0");
    // The simulator drops what the type does not support, like PVE (a raw call to show it).
    client
        .call(
            Method::POST,
            "/storage",
            Params::new()
                .set("storage", "rbd2")
                .set("type", "rbd")
                .set("content", "images,backup"),
        )
        .await
        .unwrap();
    assert_eq!(sim.storage("rbd2").unwrap()["content"], "images");
}

#[tokio::test]
async fn update_with_digest_and_fixed_options() {
    let sim = PveSim::start_default();
    let client = sim.client();
    client
        .create_storage(&StorageCreate::backup("bk", nfs("10.0.0.10"), &["pve1"]))
        .await
        .unwrap();
    let before = client.storage("bk").await.unwrap();

    // Capacity-independent options, with the digest just read.
    let upd = StorageUpdate {
        content: Some(vec![ContentType::Backup, ContentType::Iso]),
        nodes: Some(vec!["pve1".into(), "pve2".into()]),
        prune_backups: Some("keep-all=1".into()),
        max_protected_backups: Some(-1),
        options: Some("vers=4.1,soft".into()),
        digest: before.digest.clone(),
        ..Default::default()
    };
    client.update_storage("bk", &upd).await.unwrap();
    let after = client.storage("bk").await.unwrap();
    assert_eq!(after.content, ["backup", "iso"]);
    assert_eq!(after.nodes, ["pve1", "pve2"]);
    assert_eq!(after.prune_backups.as_deref(), Some("keep-all=1"));
    assert_eq!(after.max_protected_backups, Some(-1));
    assert_ne!(after.digest, before.digest);

    // The old digest is stale now.
    let stale = StorageUpdate {
        disable: Some(true),
        digest: before.digest.clone(),
        ..Default::default()
    };
    let err = client.update_storage("bk", &stale).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert!(!sim.storage("bk").unwrap().contains_key("disable"));

    // Disable (a boolean, sent as 1), then lift the node restriction with `delete`.
    client
        .update_storage(
            "bk",
            &StorageUpdate {
                disable: Some(true),
                delete: vec!["nodes".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let put = sim
        .requests()
        .into_iter()
        .rfind(|r| r.method == "PUT")
        .unwrap();
    assert_eq!(put.params["disable"], "1");
    assert_eq!(put.params["delete"], "nodes");
    let cfg = sim.storage("bk").unwrap();
    assert_eq!(cfg["disable"], "1");
    assert!(!cfg.contains_key("nodes"));
    assert!(client.storage("bk").await.unwrap().is_disabled());
    assert!(!client.storage_status("pve1", "bk").await.unwrap().enabled);

    // A fixed option cannot change: `server` is in the update schema (→ PVE's 500, mapped to
    // a parameter error), `export` is not (→ 400 from the schema).
    let err = client
        .call(
            Method::PUT,
            "/storage/bk",
            Params::new().set("server", "10.9.9.9"),
        )
        .await
        .unwrap_err();
    match err {
        Error::Parameter { errors, .. } => {
            assert!(errors["server"].contains("fixed parameter"), "{errors:?}")
        }
        other => panic!("{other}"),
    }
    let err = client
        .call(
            Method::PUT,
            "/storage/bk",
            Params::new().set("export", "/other"),
        )
        .await
        .unwrap_err();
    match err {
        Error::Parameter { errors, .. } => {
            assert!(errors["export"].contains("not defined in schema"))
        }
        other => panic!("{other}"),
    }
    // Deleting a required option is refused too.
    let err = client
        .update_storage(
            "bk",
            &StorageUpdate {
                delete: vec!["export".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Parameter { errors, .. } if errors.contains_key("export")),
        "{err}"
    );

    // Updating a storage that does not exist.
    let err = client
        .update_storage(
            "nope",
            &StorageUpdate {
                disable: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn delete_storage_and_not_found() {
    let sim = PveSim::start_default();
    let client = sim.client();
    client
        .create_storage(&StorageCreate::backup("bk", dir("/srv/bk"), &[]))
        .await
        .unwrap();
    client.delete_storage("bk").await.unwrap();
    assert!(sim.storage("bk").is_none());
    assert!(client.storages(None).await.unwrap().is_empty());
    let err = client.storage("bk").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    let err = client.delete_storage("bk").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert_eq!(
        sim.count("DELETE", "/storage/bk"),
        2,
        "a DELETE answered 'does not exist' is not retried"
    );
    // Status of an unknown id: PVE's 400 {storage: "No such storage."}.
    let err = client.storage_status("pve1", "bk").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    // A DELETE carries no body.
    let del = sim
        .requests()
        .into_iter()
        .find(|r| r.method == "DELETE")
        .unwrap();
    assert!(del.content_type.is_none());
}

#[tokio::test]
async fn create_already_defined_is_a_server_error() {
    let sim = PveSim::start_default();
    let client = sim.client();
    let req = StorageCreate::backup("bk", dir("/srv/bk"), &[]);
    client.create_storage(&req).await.unwrap();
    let err = client.create_storage(&req).await.unwrap_err();
    match err {
        Error::Server {
            status: 500,
            message,
        } => assert!(message.contains("already defined"), "{message}"),
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn missing_required_option_names_the_field() {
    let sim = PveSim::start_default();
    let client = sim.client();
    // The typed request cannot omit `export`, so send what a careless caller would.
    let err = client
        .call(
            Method::POST,
            "/storage",
            Params::new()
                .set("storage", "bk")
                .set("type", "nfs")
                .set("server", "10.0.0.10")
                .set("content", "backup"),
        )
        .await
        .unwrap_err();
    match &err {
        Error::Parameter { errors, .. } => {
            assert_eq!(
                errors["export"],
                "missing value for required option 'export'"
            )
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("export"));
    // `storage` and `type` are required by the schema itself: 400.
    let err = client
        .call(Method::POST, "/storage", Params::new().set("storage", "bk"))
        .await
        .unwrap_err();
    match err {
        Error::Parameter { errors, .. } => {
            assert_eq!(errors["type"], "property is missing and it is not optional")
        }
        other => panic!("{other}"),
    }
    // An option another type has but nfs does not: PVE's 500 "unexpected property".
    let err = client
        .call(
            Method::POST,
            "/storage",
            Params::new()
                .set("storage", "bk")
                .set("type", "nfs")
                .set("server", "10.0.0.10")
                .set("export", "/srv/backup")
                .bool("shared", true),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Parameter { errors, .. } if errors.contains_key("shared")),
        "{err}"
    );
    assert!(sim.storage("bk").is_none());
    // A malformed storage id is refused by the client before sending…
    let err = client
        .create_storage(&StorageCreate::backup("9bk", dir("/srv/bk"), &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Parameter { errors, .. } if errors.contains_key("storage")),
        "{err}"
    );
    // …and by the simulator with PVE's message.
    let err = client
        .call(
            Method::POST,
            "/storage",
            Params::new()
                .set("storage", "9bk")
                .set("type", "dir")
                .set("path", "/srv/bk"),
        )
        .await
        .unwrap_err();
    match err {
        Error::Parameter { errors, .. } => {
            assert_eq!(
                errors["storage"],
                "invalid format - storage ID '9bk' contains illegal characters"
            )
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn unknown_parameter_and_bad_values_are_refused() {
    let sim = PveSim::start_default();
    let client = sim.client();
    let err = client
        .call(
            Method::POST,
            "/storage",
            Params::new()
                .set("storage", "bk")
                .set("type", "dir")
                .set("path", "/srv/bk")
                .set("colour", "blue"),
        )
        .await
        .unwrap_err();
    match err {
        Error::Parameter { message, errors } => {
            assert_eq!(message, "Parameter verification failed.");
            assert_eq!(
                errors["colour"],
                "property is not defined in schema and the schema does not allow additional properties"
            );
        }
        other => panic!("{other}"),
    }
    // Unknown query parameter on a GET, wrong enum, wrong content word.
    let err = client
        .call(
            Method::GET,
            "/cluster/resources",
            Params::new().set("type", "disk"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Parameter { errors, .. } if errors["type"].contains("enumeration 'vm, storage, node, sdn'")),
        "{err}"
    );
    let err = client
        .call(
            Method::POST,
            "/storage",
            Params::new()
                .set("storage", "bk")
                .set("type", "dir")
                .set("path", "/srv/bk")
                .set("content", "backup,foo"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Parameter { errors, .. } if errors["content"] == "invalid format - invalid content type 'foo'"),
        "{err}"
    );
    assert_eq!(
        sim.count("GET", "/cluster/resources"),
        1,
        "a 400 is not retried"
    );
    assert!(sim.storage("bk").is_none());
}

#[tokio::test]
async fn booleans_go_as_one_and_zero() {
    let sim = PveSim::start_default();
    let client = sim.client();
    let req = StorageCreate {
        disable: Some(false),
        ..StorageCreate::backup(
            "bk",
            StorageType::Dir {
                path: "/srv/bk".into(),
                shared: Some(true),
                is_mountpoint: None,
            },
            &[],
        )
    };
    client.create_storage(&req).await.unwrap();
    let post = sim
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .unwrap();
    assert_eq!(post.params["shared"], "1");
    assert_eq!(post.params["disable"], "0");
    let got = client.storage("bk").await.unwrap();
    assert_eq!(got.shared, Some(true));
    assert_eq!(got.disable, Some(false));
    assert!(client.storage_status("pve1", "bk").await.unwrap().shared);
    // The string `true` is what PVE refuses (NOTES.md A3).
    let err = client
        .call(
            Method::PUT,
            "/storage/bk",
            Params::new().set("disable", "true"),
        )
        .await
        .unwrap_err();
    match err {
        Error::Parameter { errors, .. } => {
            assert_eq!(
                errors["disable"],
                "type check ('boolean') failed - got 'true'"
            )
        }
        other => panic!("{other}"),
    }
    // The `enabled=1` filter of the node storage list is a boolean too.
    client.node_storages("pve1", None, true).await.unwrap();
    let get = sim
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/nodes/pve1/storage")
        .unwrap();
    assert_eq!(get.params["enabled"], "1");
}

#[tokio::test]
async fn ticket_auth_with_csrf_on_writes() {
    let sim = PveSim::start_default();
    let client = password_client(&sim);
    client.version().await.unwrap();
    client
        .create_storage(&StorageCreate::backup("bk", dir("/srv/bk"), &[]))
        .await
        .unwrap();
    client.delete_storage("bk").await.unwrap();
    assert_eq!(sim.tickets_issued(), 1, "one login, reused");
    let log = sim.requests();
    let login = &log[0];
    assert_eq!(
        (login.method.as_str(), login.path.as_str()),
        ("POST", "/access/ticket")
    );
    assert_eq!(login.params["username"], "root@pam");
    let get = log.iter().find(|r| r.path == "/version").unwrap();
    assert_eq!((get.auth, get.csrf), ("ticket", false));
    let post = log.iter().find(|r| r.path == "/storage").unwrap();
    assert_eq!((post.auth, post.csrf, post.status), ("ticket", true, 200));
    let del = log.iter().find(|r| r.method == "DELETE").unwrap();
    assert_eq!((del.auth, del.csrf, del.status), ("ticket", true, 200));
}

#[tokio::test]
async fn a_write_without_the_csrf_header_is_refused() {
    let sim = PveSim::start_default();
    // Log in by hand, then POST with the cookie but without CSRFPreventionToken.
    let (tls, _) =
        proxmox_client::tls::rustls_config(&Trust::Fingerprint(sim.fingerprint.parse().unwrap()))
            .unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap();
    let login: serde_json::Value = http
        .post(format!("{}/api2/json/access/ticket", sim.url))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("username=root%40pam&password=sim-password")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ticket = login["data"]["ticket"].as_str().unwrap().to_string();
    let csrf = login["data"]["CSRFPreventionToken"]
        .as_str()
        .unwrap()
        .to_string();
    let write = |with_csrf: bool| {
        let mut req = http
            .post(format!("{}/api2/json/storage", sim.url))
            .header("Cookie", format!("PVEAuthCookie={ticket}"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("storage=bk&type=dir&path=%2Fsrv%2Fbk&content=backup");
        if with_csrf {
            req = req.header("CSRFPreventionToken", csrf.clone());
        }
        req.send()
    };
    let refused = write(false).await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    assert!(refused.bytes().await.unwrap().is_empty(), "401 has no body");
    assert!(sim.storage("bk").is_none());
    // A read needs no CSRF token.
    let read = http
        .get(format!("{}/api2/json/version", sim.url))
        .header("Cookie", format!("PVEAuthCookie={ticket}"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status().as_u16(), 200);
    let accepted = write(true).await.unwrap();
    assert_eq!(accepted.status().as_u16(), 200);
    assert!(sim.storage("bk").is_some());
}

#[tokio::test]
async fn an_expired_ticket_is_replaced_once() {
    let sim = PveSim::start_default();
    let client = password_client(&sim);
    client.version().await.unwrap();
    assert_eq!(sim.tickets_issued(), 1);
    sim.inject(Fault::ExpireTickets);
    // The next call gets 401, logs in again with the password, and succeeds.
    client.nodes().await.unwrap();
    assert_eq!(sim.tickets_issued(), 2);
    let statuses: Vec<(String, u16)> = sim
        .requests()
        .iter()
        .map(|r| (r.path.clone(), r.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("/access/ticket".to_string(), 200),
            ("/version".to_string(), 200),
            ("/nodes".to_string(), 401),
            ("/access/ticket".to_string(), 200),
            ("/nodes".to_string(), 200),
        ]
    );
    // Writes after the renewal carry the new CSRF token.
    client
        .create_storage(&StorageCreate::backup("bk", dir("/srv/bk"), &[]))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_old_ticket_is_renewed_before_use() {
    let sim = PveSim::start_default();
    let mut config = sim.client_config();
    config.credentials = Credentials::password(sim.username.clone(), sim.password.clone());
    config.ticket_renew_after = Duration::ZERO; // every ticket is "old"
    let client = Client::new(config).unwrap();
    client.version().await.unwrap();
    client.version().await.unwrap();
    assert_eq!(sim.tickets_issued(), 2);
    let logins: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.path == "/access/ticket")
        .collect();
    assert_eq!(logins[0].params["password"], sim.password);
    assert!(
        logins[1].params["password"].starts_with("PVE:root@pam:"),
        "renewal posts the current ticket as the password"
    );
    assert!(sim.requests().iter().all(|r| r.status == 200));
}

#[tokio::test]
async fn wrong_credentials_are_unauthorized() {
    let sim = PveSim::start_default();
    let mut config = sim.client_config();
    config.credentials =
        Credentials::token(sim.token_id.clone(), "00000000-0000-0000-0000-000000000000");
    let err = Client::new(config).unwrap().version().await.unwrap_err();
    assert!(
        matches!(&err, Error::Unauthorized { message } if message == "authentication failure"),
        "{err}"
    );
    let mut config = sim.client_config();
    config.credentials = Credentials::token("nobody@pve!x", sim.token_secret.clone());
    assert!(matches!(
        Client::new(config).unwrap().nodes().await,
        Err(Error::Unauthorized { .. })
    ));
    let mut config = sim.client_config();
    config.credentials = Credentials::password("root@pam", "wrong");
    let err = Client::new(config).unwrap().version().await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
    // 401 is not retried beyond the one fresh login.
    assert_eq!(sim.count("POST", "/access/ticket"), 2);
}

#[tokio::test]
async fn missing_privilege_is_forbidden_and_named() {
    let sim = PveSim::start_default();
    sim.client()
        .create_storage(&StorageCreate::backup("bk", dir("/srv/bk"), &[]))
        .await
        .unwrap();
    let mut config = sim.client_config();
    config.credentials = Credentials::token(
        sim.readonly_token_id.clone(),
        sim.readonly_token_secret.clone(),
    );
    let ro = Client::new(config).unwrap();
    // Reading works with Datastore.Audit…
    assert_eq!(ro.storages(None).await.unwrap().len(), 1);
    assert!(ro.storage_status("pve1", "bk").await.unwrap().active);
    // …creating needs Datastore.Allocate on /storage.
    let err = ro
        .create_storage(&StorageCreate::backup("bk2", dir("/srv/bk2"), &[]))
        .await
        .unwrap_err();
    match &err {
        Error::Forbidden {
            message,
            path,
            privilege,
        } => {
            assert_eq!(
                message,
                "Permission check failed (/storage, Datastore.Allocate)"
            );
            assert_eq!(path.as_deref(), Some("/storage"));
            assert_eq!(privilege.as_deref(), Some("Datastore.Allocate"));
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("Datastore.Allocate"));
    // Reading one storage's configuration also needs Allocate (schema permissions).
    let err = ro.storage("bk").await.unwrap_err();
    assert!(
        matches!(&err, Error::Forbidden { path: Some(p), .. } if p == "/storage/bk"),
        "{err}"
    );
    assert_eq!(sim.count("GET", "/storage/bk"), 1, "a 403 is not retried");
}

#[tokio::test]
async fn certificate_pinning_and_ca_trust() {
    let sim = PveSim::start_default();
    let other = PveSim::start_default();
    // The fingerprint of another cluster's node: refused, naming both fingerprints.
    let mut config = sim.client_config();
    config.trust = Trust::Fingerprint(other.fingerprint.parse().unwrap());
    let err = Client::new(config).unwrap().version().await.unwrap_err();
    match &err {
        Error::TlsMismatch {
            expected,
            found,
            url,
        } => {
            assert_eq!(expected, &other.fingerprint);
            assert_eq!(found, &sim.fingerprint);
            assert!(url.contains(&sim.port.to_string()));
        }
        other => panic!("{other}"),
    }
    assert_eq!(sim.requests().len(), 0, "nothing was sent");
    // The right fingerprint works.
    sim.client().version().await.unwrap();
    // So does the cluster's CA…
    let mut config = sim.client_config();
    config.trust = Trust::CaPem(sim.ca_pem.clone());
    Client::new(config).unwrap().version().await.unwrap();
    // …but not another cluster's CA.
    let mut config = sim.client_config();
    config.trust = Trust::CaPem(other.ca_pem.clone());
    let err = Client::new(config).unwrap().version().await.unwrap_err();
    assert!(
        matches!(&err, Error::TlsMismatch { found, .. } if *found == sim.fingerprint),
        "{err}"
    );
    // A malformed fingerprint is a configuration error.
    assert!(matches!(
        "AA:BB".parse::<proxmox_client::Fingerprint>(),
        Err(Error::Config(_))
    ));
}

#[tokio::test]
async fn server_errors_are_retried_for_get_only() {
    let sim = PveSim::start_default();
    let client = sim.client();
    sim.inject(Fault::ServerErrors(2));
    let v = client.version().await.unwrap();
    assert_eq!(v.release, "9.1");
    let statuses: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 500, 200]);

    sim.inject(Fault::ServerErrors(2));
    let err = client
        .create_storage(&StorageCreate::backup("bk", dir("/srv/bk"), &[]))
        .await
        .unwrap_err();
    match err {
        Error::Server { status, message } => {
            assert_eq!(status, 500);
            assert!(
                message.contains("simulated internal server error"),
                "{message}"
            );
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        sim.count("POST", "/storage"),
        1,
        "a create is never retried"
    );

    // Three 500s in a row exhaust the three attempts of a GET.
    sim.inject(Fault::ServerErrors(3));
    let err = client.nodes().await.unwrap_err();
    assert!(matches!(err, Error::Server { status: 500, .. }), "{err}");
    assert_eq!(sim.count("GET", "/nodes"), 3);
}

#[tokio::test]
async fn unreachable_port() {
    let port = bulwark_tests::free_port();
    let sim = PveSim::start_default();
    let mut config = sim.client_config();
    config.url = format!("https://127.0.0.1:{port}");
    let err = Client::new(config).unwrap().version().await.unwrap_err();
    match &err {
        Error::Unreachable { url, .. } => {
            assert_eq!(url, &format!("https://127.0.0.1:{port}/api2/json/version"))
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains(&port.to_string()));
}

#[tokio::test]
async fn slow_answers_time_out_and_reads_are_retried() {
    let sim = PveSim::start_default();
    let mut config = sim.client_config();
    config.timeout = Duration::from_secs(1);
    let client = Client::new(config).unwrap();
    // One slow answer: the read times out once and succeeds on the retry.
    sim.inject(Fault::Delay {
        duration: Duration::from_millis(2500),
        requests: 1,
    });
    client.version().await.unwrap();
    // Every answer slow: unreachable after the attempts.
    sim.inject(Fault::Delay {
        duration: Duration::from_millis(2500),
        requests: 3,
    });
    let err = client.nodes().await.unwrap_err();
    assert!(
        matches!(&err, Error::Unreachable { reason, .. } if reason.contains("timed out")),
        "{err}"
    );
}

#[tokio::test]
async fn task_polling() {
    let sim = PveSim::start_default();
    let client = sim.client();
    let ok: proxmox_client::Upid = sim
        .start_task("pve1", "vzdump", Duration::from_millis(1500), "OK")
        .parse()
        .unwrap();
    assert_eq!(ok.node, "pve1");
    let first = client.task_status(&ok).await.unwrap();
    assert!(first.is_running());
    let done = client
        .wait_task(&ok, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(done.succeeded());
    assert_eq!(done.exitstatus.as_deref(), Some("OK"));
    assert!(sim.count("GET", &format!("/nodes/pve1/tasks/{ok}/status")) >= 2);

    let warn: proxmox_client::Upid = sim
        .start_task("pve2", "vzdump", Duration::ZERO, "WARNINGS: 2")
        .parse()
        .unwrap();
    assert!(client
        .wait_task(&warn, Duration::from_secs(5))
        .await
        .unwrap()
        .succeeded());

    let failing: proxmox_client::Upid = sim
        .start_task(
            "pve2",
            "imgdel",
            Duration::from_millis(200),
            "unable to delete volume: permission denied",
        )
        .parse()
        .unwrap();
    let err = client
        .wait_task(&failing, Duration::from_secs(10))
        .await
        .unwrap_err();
    match err {
        Error::TaskFailed { upid, exitstatus } => {
            assert_eq!(upid, failing.to_string());
            assert_eq!(exitstatus, "unable to delete volume: permission denied");
        }
        other => panic!("{other}"),
    }

    let slow: proxmox_client::Upid = sim
        .start_task("pve1", "vzdump", Duration::from_secs(60), "OK")
        .parse()
        .unwrap();
    let err = client
        .wait_task(&slow, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TaskTimeout { .. }), "{err}");
}

#[tokio::test]
async fn deleting_a_backup_volume_is_a_task() {
    let sim = PveSim::start_default();
    let client = sim.client();
    client
        .create_storage(&StorageCreate::backup("bk", nfs("nfs.example.com"), &[]))
        .await
        .unwrap();
    let volid = sim.add_backup("bk", 100, 1 << 20);
    let upid = client.delete_volume("pve1", "bk", &volid).await.unwrap();
    assert_eq!(
        (upid.node.as_str(), upid.task_type.as_str()),
        ("pve1", "imgdel")
    );
    assert_eq!(upid.user, sim.token_id);
    client
        .wait_task(&upid, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(client
        .storage_content("pve1", "bk", None)
        .await
        .unwrap()
        .is_empty());
    // The volume id's `/` travelled percent-encoded inside one path segment.
    let del = sim
        .requests()
        .into_iter()
        .find(|r| r.method == "DELETE")
        .unwrap();
    assert_eq!(del.path, format!("/nodes/pve1/storage/bk/content/{volid}"));
}

#[tokio::test]
async fn inactive_and_full_storage_in_status() {
    let sim = PveSim::start(PveSimOptions {
        default_total: 10_000,
        ..Default::default()
    });
    let client = sim.client();
    client
        .create_storage(&StorageCreate::backup("bk", nfs("10.0.0.10"), &[]))
        .await
        .unwrap();
    sim.set_storage_usage("bk", 10_000, 4_000);
    assert!(client.storage_status("pve1", "bk").await.unwrap().active);

    sim.inject(Fault::StorageInactive("bk".into()));
    let st = client.storage_status("pve1", "bk").await.unwrap();
    assert!(!st.active, "the NFS server went away");
    assert!(st.enabled);
    assert_eq!((st.total, st.used, st.avail), (0, 0, 0));
    let res = client.storage_resources().await.unwrap();
    assert!(res.iter().all(|r| r.status.as_deref() == Some("unknown")));
    let listed = client.node_storages("pve1", None, false).await.unwrap();
    assert_eq!(listed[0].used_fraction, None);

    sim.inject(Fault::StorageActive("bk".into()));
    sim.inject(Fault::DiskFull("bk".into()));
    let st = client.storage_status("pve2", "bk").await.unwrap();
    assert!(st.active);
    assert_eq!((st.total, st.used, st.avail), (10_000, 10_000, 0));
    let listed = client
        .node_storages("pve2", Some(ContentType::Backup), true)
        .await
        .unwrap();
    assert_eq!(listed[0].used_fraction, Some(1.0));
}

#[tokio::test]
async fn unknown_node_and_unimplemented_path() {
    let sim = PveSim::start_default();
    let client = sim.client();
    let err = client.node_storages("pve9", None, false).await.unwrap_err();
    assert!(
        matches!(&err, Error::Server { status: 500, message } if message.contains("hostname lookup 'pve9' failed")),
        "{err}"
    );
    let err = client
        .call(Method::GET, "/nodes/pve1/qemu", Params::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}
