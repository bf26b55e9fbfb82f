//! The simulator's parameter rules, loaded from the same schema file the client embeds
//! (`proxmox-client/schema/pve-api-subset.json`), so the simulator checks requests the way
//! PVE's `JSONSchema.pm` does rather than the way the client author thought it would:
//! unknown parameters (with `additionalProperties: 0`), missing non-optional ones, `type`
//! (booleans only `0`/`1` — JSON `true`/`false` are turned into those before checking),
//! `enum`, `minimum`/`maximum`, `maxLength`, anchored `pattern`, and the named `format`s from
//! the file's `formats` table (regexes compiled from it, `-list` splitting, the storage-server
//! rule, `prune-backups`). Formats the file does not describe are accepted.
//! Messages are PVE's own texts.

use std::collections::BTreeMap;

use regex_automata::meta::Regex;
use serde_json::Value;

/// A method of an endpoint: its parameter schema, permissions and flags.
pub struct Method {
    pub properties: serde_json::Map<String, Value>,
    pub additional: bool,
    pub permissions: Value,
    pub allowtoken: bool,
}

pub struct Schema {
    /// (path template, method) → rules
    pub endpoints: Vec<(String, String, Method)>,
    pub storage_types: Value,
    pub storage_semantics: Value,
    formats: BTreeMap<String, Format>,
}

struct Format {
    regex: Option<Regex>,
    min_length: usize,
    errors: Vec<String>,
    enumeration: Vec<String>,
}

impl Schema {
    pub fn load() -> Schema {
        let json: Value =
            serde_json::from_str(proxmox_client::schema::SCHEMA_JSON).expect("schema JSON");
        let mut endpoints = Vec::new();
        for e in json["endpoints"].as_array().expect("endpoints") {
            let path = e["path"].as_str().expect("path").to_string();
            for (method, info) in e["info"].as_object().expect("info") {
                let params = &info["parameters"];
                endpoints.push((
                    path.clone(),
                    method.clone(),
                    Method {
                        properties: params["properties"]
                            .as_object()
                            .cloned()
                            .unwrap_or_default(),
                        additional: truthy(&params["additionalProperties"]),
                        permissions: info["permissions"].clone(),
                        allowtoken: truthy(&info["allowtoken"]),
                    },
                ));
            }
        }
        let mut formats = BTreeMap::new();
        for (name, f) in json["formats"].as_object().expect("formats") {
            if name.starts_with('_') {
                continue;
            }
            let regex = f["regex"].as_str().map(|r| {
                let r = if f["case_insensitive"] == true {
                    format!("(?i){r}")
                } else {
                    r.to_string()
                };
                Regex::new(&r).unwrap_or_else(|e| panic!("format {name}: {e}"))
            });
            formats.insert(
                name.clone(),
                Format {
                    regex,
                    min_length: f["min_length"].as_u64().unwrap_or(0) as usize,
                    errors: strings(&f["errors"]),
                    enumeration: strings(&f["enum"]),
                },
            );
        }
        Schema {
            endpoints,
            storage_types: json["storage_types"].clone(),
            storage_semantics: json["storage_semantics"].clone(),
            formats,
        }
    }

    /// The endpoint whose template matches `segments`, with the path parameters.
    pub fn route(&self, method: &str, segments: &[String]) -> Route<'_> {
        let mut path_found = false;
        for (template, m, rules) in &self.endpoints {
            let Some(vars) = match_template(template, segments) else {
                continue;
            };
            path_found = true;
            if m == method {
                return Route::Found {
                    template: template.clone(),
                    vars,
                    rules,
                };
            }
        }
        if path_found {
            Route::NoMethod
        } else {
            Route::NoPath
        }
    }

    /// Checks `params` against `rules`; returns PVE's per-field errors.
    pub fn validate(
        &self,
        rules: &Method,
        params: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut errors = BTreeMap::new();
        for (name, value) in params {
            match rules.properties.get(name) {
                None if !rules.additional => {
                    errors.insert(
                        name.clone(),
                        "property is not defined in schema and the schema does not allow additional properties".into(),
                    );
                }
                None => {}
                Some(prop) => {
                    if let Err(e) = self.check_value(prop, value) {
                        errors.insert(name.clone(), e);
                    }
                }
            }
        }
        for (name, prop) in &rules.properties {
            if !truthy(&prop["optional"]) && !params.contains_key(name) {
                errors.insert(
                    name.clone(),
                    "property is missing and it is not optional".into(),
                );
            }
        }
        errors
    }

    fn check_value(&self, prop: &Value, value: &str) -> Result<(), String> {
        let ty = prop["type"].as_str().unwrap_or("string");
        match ty {
            "boolean" => {
                if value != "0" && value != "1" {
                    return Err(format!("type check ('boolean') failed - got '{value}'"));
                }
            }
            "integer" => {
                let digits = value.strip_prefix(['-', '+']).unwrap_or(value);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("type check ('integer') failed - got '{value}'"));
                }
            }
            "number" => {
                if value.parse::<f64>().is_err() {
                    return Err(format!("type check ('number') failed - got '{value}'"));
                }
            }
            _ => {}
        }
        if let Some(list) = prop["enum"].as_array() {
            let allowed = strings(&Value::Array(list.clone()));
            if !allowed.iter().any(|a| a == value) {
                return Err(format!(
                    "value '{value}' does not have a value in the enumeration '{}'",
                    allowed.join(", ")
                ));
            }
        }
        if ty == "integer" || ty == "number" {
            let n: f64 = value.parse().unwrap_or(0.0);
            if let Some(min) = number(&prop["minimum"]) {
                if n < min {
                    return Err(format!(
                        "value must have a minimum value of {}",
                        prop["minimum"].to_string().trim_matches('"')
                    ));
                }
            }
            if let Some(max) = number(&prop["maximum"]) {
                if n > max {
                    return Err(format!(
                        "value must have a maximum value of {}",
                        prop["maximum"].to_string().trim_matches('"')
                    ));
                }
            }
        }
        if let Some(max) = prop["maxLength"].as_u64() {
            if value.chars().count() as u64 > max {
                return Err(format!("value may only be {max} characters long"));
            }
        }
        if let Some(min) = prop["minLength"].as_u64() {
            if (value.chars().count() as u64) < min {
                return Err(format!("value must be at least {min} characters long"));
            }
        }
        if let Some(pattern) = prop["pattern"].as_str() {
            let re = Regex::new(&format!("^(?:{pattern})$")).expect("schema pattern");
            if !re.is_match(value) {
                return Err("value does not match the regex pattern".into());
            }
        }
        match &prop["format"] {
            Value::String(name) => self
                .check_format(name, value)
                .map_err(|e| format!("invalid format - {e}")),
            // A property string (`bwlimit`): key=value pairs.
            Value::Object(_) => {
                for part in value.split(',').filter(|p| !p.is_empty()) {
                    if !part.contains('=') {
                        return Err(format!("invalid format - missing key in comma-separated list property '{part}'"));
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// One named format; `X-list` checks every item of the split list against `X`.
    pub fn check_format(&self, name: &str, value: &str) -> Result<(), String> {
        if let Some(base) = name.strip_suffix("-list") {
            for item in proxmox_client::de::split_list(value) {
                self.check_format(base, &item)?;
            }
            return Ok(());
        }
        match name {
            "pve-storage-server" => {
                return if is_server(value) {
                    Ok(())
                } else {
                    Err("value does not look like a valid server name or IP address".into())
                }
            }
            "prune-backups" => return check_prune_backups(value),
            _ => {}
        }
        let Some(f) = self.formats.get(name) else {
            return Ok(()); // not described in the file: not checked
        };
        if !f.enumeration.is_empty() && !f.enumeration.iter().any(|e| e == value) {
            return Err(fill(f.errors.first(), value));
        }
        if value.chars().count() < f.min_length {
            return Err(fill(f.errors.iter().find(|e| e.contains("shorter")), value));
        }
        if let Some(re) = &f.regex {
            if !re.is_match(value) {
                let msg = f
                    .errors
                    .iter()
                    .find(|e| !e.contains("shorter"))
                    .or(f.errors.first());
                return Err(fill(msg, value));
            }
        }
        Ok(())
    }
}

pub enum Route<'a> {
    Found {
        template: String,
        vars: BTreeMap<String, String>,
        rules: &'a Method,
    },
    NoMethod,
    NoPath,
}

fn match_template(template: &str, segments: &[String]) -> Option<BTreeMap<String, String>> {
    let parts: Vec<&str> = template.trim_start_matches('/').split('/').collect();
    if parts.len() != segments.len() {
        return None;
    }
    let mut vars = BTreeMap::new();
    for (p, s) in parts.iter().zip(segments) {
        if let Some(var) = p.strip_prefix('{').and_then(|v| v.strip_suffix('}')) {
            vars.insert(var.to_string(), s.clone());
        } else if p != s {
            return None;
        }
    }
    Some(vars)
}

/// Replaces the `<id>`-style placeholder of a message template with the value.
fn fill(template: Option<&String>, value: &str) -> String {
    let Some(t) = template else {
        return format!("value '{value}' does not match the format");
    };
    match (t.find('<'), t.find('>')) {
        (Some(a), Some(b)) if a < b => format!("{}{value}{}", &t[..a], &t[b + 1..]),
        _ => t.clone(),
    }
}

/// `pve-storage-server`: an IPv4/IPv6 address or a DNS name.
fn is_server(v: &str) -> bool {
    if v.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let v = v.trim_start_matches('[').trim_end_matches(']');
    if v.parse::<std::net::Ipv6Addr>().is_ok() {
        return true;
    }
    !v.is_empty()
        && v.len() <= 253
        && v.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}

/// `prune-backups`: `keep-all=0|1` or `keep-<period>=N` pairs; keep-all with others refused.
fn check_prune_backups(v: &str) -> Result<(), String> {
    let mut keep_all = false;
    let mut others = false;
    for part in v.split(',').filter(|p| !p.is_empty()) {
        let Some((k, n)) = part.split_once('=') else {
            return Err(format!(
                "missing key in comma-separated list property '{part}'"
            ));
        };
        match k {
            "keep-all" => keep_all = matches!(n, "1" | "yes" | "on" | "true"),
            "keep-last" | "keep-hourly" | "keep-daily" | "keep-weekly" | "keep-monthly"
            | "keep-yearly" => {
                let n: u64 = n
                    .parse()
                    .map_err(|_| format!("{k}: type check ('integer') failed - got '{n}'"))?;
                others |= n > 0;
            }
            _ => return Err(format!("{k}: property is not defined in schema")),
        }
    }
    if keep_all && others {
        return Err("keep-all cannot be set together with other options.".into());
    }
    Ok(())
}

pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => matches!(s.as_str(), "1" | "yes" | "true"),
        _ => false,
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
