//! Request parameters in the encodings PVE accepts (NOTES.md A3), kept in one place so no call
//! can get them wrong:
//!
//! - **booleans** are `1` / `0`; the strings `true`, `yes` and `on` fail PVE's type check
//!   (`type check ('boolean') failed - got 'true'`), the most reported client mistake (A11);
//! - **lists** (`content`, `nodes`, `delete`, every `*-list` format) are one comma-separated
//!   string, not repeated keys and not JSON arrays (the array form is a legacy join PVE plans to
//!   drop in 10.x);
//! - GET and DELETE carry parameters in the query string only (a body gets 501); POST and PUT
//!   carry them form-encoded in the body. `client.rs` applies that rule; this type only holds
//!   the ordered `(name, value)` pairs.

/// Ordered request parameters, already in their wire form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn new() -> Params {
        Params(Vec::new())
    }

    /// A string (or anything displayed as one, e.g. an integer).
    pub fn set(mut self, name: &str, value: impl ToString) -> Params {
        self.0.push((name.to_string(), value.to_string()));
        self
    }

    pub fn opt(self, name: &str, value: Option<impl ToString>) -> Params {
        match value {
            Some(v) => self.set(name, v),
            None => self,
        }
    }

    /// A boolean as PVE wants it: `1` or `0`.
    pub fn bool(self, name: &str, value: bool) -> Params {
        self.set(name, if value { "1" } else { "0" })
    }

    pub fn opt_bool(self, name: &str, value: Option<bool>) -> Params {
        match value {
            Some(v) => self.bool(name, v),
            None => self,
        }
    }

    /// A `*-list` value: items joined by `,`. An empty list sets nothing.
    pub fn list<S: AsRef<str>>(self, name: &str, items: &[S]) -> Params {
        if items.is_empty() {
            return self;
        }
        let joined = items
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(",");
        self.set(name, joined)
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Percent-encodes one path segment (a storage id, node name, UPID or volume id). Volume ids
/// contain `/` (`bk:backup/vzdump-….tar.zst`), which must not split the path.
pub fn segment(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@!$&'()*+,;=".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_are_one_and_zero() {
        let p = Params::new()
            .bool("disable", true)
            .bool("shared", false)
            .opt_bool("krbd", None);
        assert_eq!(
            p.pairs(),
            &[
                ("disable".to_string(), "1".to_string()),
                ("shared".to_string(), "0".to_string())
            ]
        );
    }

    #[test]
    fn lists_are_one_comma_string() {
        let p = Params::new()
            .list("content", &["backup", "images"])
            .list("nodes", &["pve1", "pve2"])
            .list::<&str>("delete", &[]);
        assert_eq!(p.get("content"), Some("backup,images"));
        assert_eq!(p.get("nodes"), Some("pve1,pve2"));
        assert_eq!(p.get("delete"), None, "an empty list is left out");
        assert_eq!(p.pairs().len(), 2, "one key per list, never repeated keys");
    }

    #[test]
    fn form_encoding_of_lists_and_paths() {
        // What reqwest puts on the wire for a body (serde_urlencoded, like `.form()`).
        let p = Params::new()
            .list("content", &["backup", "images"])
            .set("export", "/srv/backup")
            .set("options", "vers=4.2");
        let body = reqwest_form(&p);
        assert_eq!(
            body,
            "content=backup%2Cimages&export=%2Fsrv%2Fbackup&options=vers%3D4.2"
        );
    }

    fn reqwest_form(p: &Params) -> String {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(
                crate::tls::rustls_config(&crate::tls::Trust::Fingerprint(
                    crate::tls::Fingerprint([0; 32]),
                ))
                .unwrap()
                .0,
            )
            .build()
            .unwrap();
        let req = client
            .post("https://127.0.0.1/")
            .form(p.pairs())
            .build()
            .unwrap();
        String::from_utf8(req.body().unwrap().as_bytes().unwrap().to_vec()).unwrap()
    }

    #[test]
    fn segments_keep_colons_and_escape_slashes() {
        assert_eq!(
            segment("UPID:pve1:00001234:0000ABCD:65000000:imgdel:bk:root@pam!bulwark:"),
            "UPID:pve1:00001234:0000ABCD:65000000:imgdel:bk:root@pam!bulwark:"
        );
        assert_eq!(
            segment("bk:backup/vzdump-qemu-100.vma.zst"),
            "bk:backup%2Fvzdump-qemu-100.vma.zst"
        );
        assert_eq!(segment("a b?#"), "a%20b%3F%23");
    }
}
