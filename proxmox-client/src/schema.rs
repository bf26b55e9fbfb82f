//! The Proxmox VE API schema subset this client was written against, embedded so the unit
//! tests can check the client's requests against it (and so other crates, such as the test
//! simulator, can load the same rules). Origin and commits: `schema/README.md`.

/// `schema/pve-api-subset.json`: endpoints (`info` per method as in pve-docs `apidata.js`),
/// `storage_types`, `storage_semantics` and `formats`.
pub const SCHEMA_JSON: &str = include_str!("../schema/pve-api-subset.json");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::Params;
    use crate::storage::{ContentType, StorageCreate, StorageType, StorageUpdate};
    use serde_json::Value;

    fn properties(path: &str, method: &str) -> Value {
        let schema: Value = serde_json::from_str(SCHEMA_JSON).unwrap();
        let endpoint = schema["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == path)
            .unwrap_or_else(|| panic!("{path} not in the schema"));
        let info = &endpoint["info"][method];
        assert!(info.is_object(), "{method} {path} not in the schema");
        info["parameters"]["properties"].clone()
    }

    /// Every parameter name exists for that method and path, and booleans are sent as 0/1.
    fn check(path: &str, method: &str, params: &Params) {
        let props = properties(path, method);
        for (name, value) in params.pairs() {
            let prop = &props[name];
            assert!(
                prop.is_object(),
                "{method} {path} has no parameter '{name}'"
            );
            if prop["type"] == "boolean" {
                assert!(value == "0" || value == "1", "{name}={value} is not 0/1");
            }
            if prop["type"] == "integer" {
                assert!(
                    value.parse::<i64>().is_ok(),
                    "{name}={value} is not an integer"
                );
            }
        }
    }

    #[test]
    fn storage_requests_use_the_schema_names() {
        let kinds = [
            StorageType::Nfs {
                server: "10.0.0.10".into(),
                export: "/srv/backup".into(),
                path: Some("/mnt/pve/bk".into()),
                options: Some("vers=4.2".into()),
            },
            StorageType::CephFs {
                path: Some("/mnt/pve/cfs".into()),
                fs_name: Some("cephfs".into()),
                monhost: vec!["10.0.0.1".into()],
                username: Some("admin".into()),
                keyring: Some("AQ==".into()),
                subdir: Some("/bulwark".into()),
            },
            StorageType::Rbd {
                pool: Some("rbd".into()),
                monhost: vec!["10.0.0.1".into()],
                username: Some("admin".into()),
                keyring: Some("AQ==".into()),
                krbd: Some(true),
                namespace: Some("ns".into()),
            },
            StorageType::Dir {
                path: "/srv/bk".into(),
                shared: Some(false),
                is_mountpoint: Some("yes".into()),
            },
        ];
        for kind in kinds {
            let req = StorageCreate {
                disable: Some(false),
                prune_backups: Some("keep-daily=7".into()),
                max_protected_backups: Some(-1),
                content: vec![ContentType::Images],
                ..StorageCreate::backup("bk", kind, &["pve1", "pve2"])
            };
            check("/storage", "POST", &req.params());
        }
        let upd = StorageUpdate {
            content: Some(vec![ContentType::Backup]),
            nodes: Some(vec!["pve1".into()]),
            disable: Some(true),
            options: Some("vers=4.2".into()),
            prune_backups: Some("keep-all=1".into()),
            max_protected_backups: Some(5),
            delete: vec!["nodes".into()],
            digest: Some("abc".into()),
        };
        check("/storage/{storage}", "PUT", &upd.params());
    }

    #[test]
    fn query_parameters_use_the_schema_names() {
        check(
            "/cluster/resources",
            "GET",
            &Params::new().set("type", "storage"),
        );
        check("/storage", "GET", &Params::new().set("type", "nfs"));
        check(
            "/nodes/{node}/storage",
            "GET",
            &Params::new().set("content", "backup").bool("enabled", true),
        );
        check(
            "/nodes/{node}/storage/{storage}/content",
            "GET",
            &Params::new().set("content", "backup").set("vmid", 100),
        );
        check(
            "/access/ticket",
            "POST",
            &Params::new()
                .set("username", "root@pam")
                .set("password", "x"),
        );
    }
}
