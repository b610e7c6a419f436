//! The OpenAPI document of every route the layer answers, served at
//! `{prefix}/openapi.json` as configured: under the real prefix, and with only
//! the dialects that are on.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::context::DoorConfig;

/// The document as written, for the default prefix `/async` and every dialect.
const SPEC: &str = include_str!("openapi.json");
const DEFAULT_PREFIX: &str = "/async";

fn is_native(path: &str) -> bool {
    path == DEFAULT_PREFIX || path.starts_with("/async/")
}

fn is_bifrost(path: &str) -> bool {
    path.starts_with("/v1/async/")
}

/// The document for this configuration.
pub(crate) fn document(config: &DoorConfig, baseten: bool) -> Bytes {
    let Ok(Value::Object(mut spec)) = serde_json::from_str::<Value>(SPEC) else {
        // The document is checked by tests; an unparsable one is a build bug.
        return Bytes::from_static(SPEC.as_bytes());
    };
    if let Some(Value::Object(paths)) = spec.remove("paths") {
        let mut kept = Map::new();
        for (path, item) in paths {
            let path = if is_native(&path) {
                format!("{}{}", config.prefix, &path[DEFAULT_PREFIX.len()..])
            } else if is_bifrost(&path) {
                if !config.bifrost {
                    continue;
                }
                path
            } else {
                // The rest is Baseten's.
                if !baseten {
                    continue;
                }
                path
            };
            kept.insert(path, item);
        }
        spec.insert("paths".into(), Value::Object(kept));
    }
    Bytes::from(serde_json::to_vec(&spec).unwrap_or_default())
}
