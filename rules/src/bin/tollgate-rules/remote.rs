//! The commands that drive a rollout on the control plane: `deploy`, `activate`, `promote`,
//! `rollback` and `status`, and how their answers are printed.

use std::path::Path;

use tollgate_rules::bundle;

use crate::cli::Remote;
use crate::client::{Body, Client};
use crate::failure::{Failure, Outcome};
use crate::files::read_bundle;
use crate::out::outln;

pub(crate) fn deploy(path: &Path, remote: &Remote) -> Outcome {
    let bytes = read_bundle(path)?;
    // Catch a wrong file before the upload; the control plane verifies the signature.
    let local =
        bundle::inspect(&bytes).map_err(|e| Failure::Failed(format!("{}: {e}", path.display())))?;
    if local.key_id.is_none() {
        return Err(Failure::Failed(format!(
            "{} is not signed; run `tollgate-rules sign` first",
            path.display()
        )));
    }
    let client = Client::new(remote)?;
    post(&client, "/admin/v1/bundles", Body::Bundle(bytes))
}

pub(crate) fn activate(version: u64, canary: u8, remote: &Remote) -> Outcome {
    let body = serde_json::json!({ "canary_percent": canary });
    post(
        &Client::new(remote)?,
        &format!("/admin/v1/bundles/{version}/activate"),
        Body::Json(body),
    )
}

pub(crate) fn promote(version: u64, remote: &Remote) -> Outcome {
    let body = serde_json::json!({});
    post(
        &Client::new(remote)?,
        &format!("/admin/v1/bundles/{version}/promote"),
        Body::Json(body),
    )
}

pub(crate) fn rollback(to: Option<u64>, remote: &Remote) -> Outcome {
    let body = match to {
        Some(v) => serde_json::json!({ "to_version": v }),
        None => serde_json::json!({}),
    };
    post(
        &Client::new(remote)?,
        "/admin/v1/rollback",
        Body::Json(body),
    )
}

pub(crate) fn status(remote: &Remote) -> Outcome {
    let client = Client::new(remote)?;
    let bundles = client.send(reqwest::Method::GET, "/admin/v1/bundles", Body::Empty)?;
    let edges = client.send(reqwest::Method::GET, "/admin/v1/edges", Body::Empty)?;
    outln!("bundles");
    print_table(rows(&bundles, "bundles"));
    outln!();
    outln!("edges");
    print_table(rows(&edges, "edges"));
    Ok(())
}

/// POSTs `body`; prints the answer.
fn post(client: &Client, path: &str, body: Body) -> Outcome {
    let answer = client.send(reqwest::Method::POST, path, body)?;
    print_object(&answer);
    Ok(())
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `key: value` per field of an object; anything else as JSON.
fn print_object(v: &serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            let width = map.keys().map(String::len).max().unwrap_or(0);
            for (k, v) in map {
                outln!("{k:<width$}  {}", scalar(v));
            }
        }
        serde_json::Value::Null => outln!("ok"),
        other => outln!("{other}"),
    }
}

/// The rows of a list answer: the array itself, or the array under `key` (or the only array
/// field) of an object.
fn rows<'a>(v: &'a serde_json::Value, key: &str) -> &'a [serde_json::Value] {
    match v {
        serde_json::Value::Array(rows) => rows,
        serde_json::Value::Object(map) => map
            .get(key)
            .or_else(|| map.get("items"))
            .or_else(|| map.values().find(|v| v.is_array()))
            .and_then(|v| v.as_array())
            .map_or(&[], Vec::as_slice),
        _ => &[],
    }
}

/// A table of the scalar fields of the rows: ids and versions first, then the rest in order.
fn print_table(rows: &[serde_json::Value]) {
    if rows.is_empty() {
        outln!("  (none)");
        return;
    }
    let mut columns: Vec<&str> = Vec::new();
    for row in rows {
        if let Some(map) = row.as_object() {
            for (k, v) in map {
                if !v.is_object() && !v.is_array() && !columns.contains(&k.as_str()) {
                    columns.push(k);
                }
            }
        }
    }
    // Identifying columns first (JSON objects arrive with sorted keys).
    columns.sort_by_key(|c| !(*c == "version" || *c == "id" || c.ends_with("_id")));
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|c| row.get(*c).map_or("-".into(), scalar))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<&str>| {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        outln!("  {}", padded.join("  ").trim_end());
    };
    line(columns.clone());
    for r in &cells {
        line(r.iter().map(String::as_str).collect());
    }
}
