//! Tolerant decoding of PVE answers. The Perl server serialises whatever its scalars hold, so
//! a schema `integer` may arrive as `12`, `12.0` or `"12"`, and a `boolean` as `1`, `"1"` or
//! `true` (`storage.cfg` values are strings until something treats them as numbers). Comma
//! lists (`content`, `nodes`) arrive as one string. These helpers accept every such form; the
//! response structs also ignore fields they do not know, so a newer PVE does not break us.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

fn to_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_i64().map(|i| i.max(0) as u64))
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.max(0.0) as u64)
            }),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<u64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(|f| f.max(0.0) as u64)
            })
        }
        Value::Bool(b) => Some(*b as u64),
        _ => None,
    }
}

fn to_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

fn to_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
}

fn to_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().map(|f| f != 0.0),
        Value::String(s) => match s.trim() {
            "1" | "true" | "yes" | "on" => Some(true),
            "0" | "false" | "no" | "off" | "" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

macro_rules! lenient {
    ($name:ident, $opt_name:ident, $ty:ty, $conv:ident, $what:literal) => {
        pub fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            let v = Value::deserialize(d)?;
            $conv(&v).ok_or_else(|| {
                D::Error::custom(format!(concat!("expected ", $what, ", got {}"), v))
            })
        }

        pub fn $opt_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<$ty>, D::Error> {
            let v = Option::<Value>::deserialize(d)?;
            match v {
                None | Some(Value::Null) => Ok(None),
                Some(v) => $conv(&v).map(Some).ok_or_else(|| {
                    D::Error::custom(format!(concat!("expected ", $what, ", got {}"), v))
                }),
            }
        }
    };
}

lenient!(u64_any, opt_u64_any, u64, to_u64, "an unsigned integer");
lenient!(i64_any, opt_i64_any, i64, to_i64, "an integer");
lenient!(f64_any, opt_f64_any, f64, to_f64, "a number");
lenient!(bool_any, opt_bool_any, bool, to_bool, "a boolean");

/// An optional boolean that means `false` when absent or `null` (status fields).
pub fn bool_or_false<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(opt_bool_any(d)?.unwrap_or(false))
}

/// An optional size that means 0 when absent or `null` (status of an inactive storage).
pub fn u64_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(opt_u64_any(d)?.unwrap_or(0))
}

/// A `*-list` string (`"backup,images"`, also `;`/whitespace separated) as its items.
pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(split_list(&s)),
        Some(Value::Array(items)) => Ok(items
            .into_iter()
            .filter_map(|i| match i {
                Value::String(s) => Some(s),
                Value::Null => None,
                other => Some(other.to_string()),
            })
            .collect()),
        Some(other) => Err(D::Error::custom(format!("expected a list, got {other}"))),
    }
}

/// PVE's `split_list`: on NUL if present, else on `,`, `;` and whitespace; empty items dropped.
pub fn split_list(s: &str) -> Vec<String> {
    let parts: Vec<&str> = if s.contains('\0') {
        s.split('\0').collect()
    } else {
        s.split(|c: char| c == ',' || c == ';' || c.is_whitespace())
            .collect()
    };
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    struct Sample {
        #[serde(deserialize_with = "u64_any")]
        total: u64,
        #[serde(default, deserialize_with = "opt_u64_any")]
        used: Option<u64>,
        #[serde(deserialize_with = "bool_any")]
        active: bool,
        #[serde(default, deserialize_with = "list")]
        content: Vec<String>,
    }

    #[test]
    fn numbers_and_booleans_in_every_form_pve_sends() {
        for json in [
            r#"{"total": 100, "used": 5, "active": 1, "content": "backup,images"}"#,
            r#"{"total": "100", "used": "5", "active": "1", "content": "backup;images"}"#,
            r#"{"total": 100.0, "used": 5.0, "active": true, "content": ["backup", "images"], "extra": {"x": 1}}"#,
        ] {
            let s: Sample = serde_json::from_str(json).unwrap();
            assert_eq!(s.total, 100);
            assert_eq!(s.used, Some(5));
            assert!(s.active);
            assert_eq!(s.content, ["backup", "images"]);
        }
        let s: Sample = serde_json::from_str(r#"{"total": 0, "active": 0}"#).unwrap();
        assert_eq!(s.used, None);
        assert!(!s.active);
        assert!(s.content.is_empty());
        assert!(serde_json::from_str::<Sample>(r#"{"total": "lots", "active": 0}"#).is_err());
    }

    #[test]
    fn split_list_follows_pve() {
        assert_eq!(split_list("a,b;c d\te"), ["a", "b", "c", "d", "e"]);
        assert_eq!(split_list("a b\0c,d"), ["a b", "c,d"]);
        assert!(split_list("").is_empty());
        assert_eq!(split_list("a,,b"), ["a", "b"]);
    }
}
