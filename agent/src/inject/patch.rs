//! RFC 6902 JSON Patch between two documents, as the admission webhook answers it:
//! object keys added or removed one by one (RFC 6901 escaping), arrays extended at the
//! front or the back with `add` (an absent array is added whole), anything else
//! replaced. Applying the patch to `old` gives `new` exactly.

use serde_json::{Value, json};

/// `~` → `~0`, `/` → `~1` (RFC 6901).
pub fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

pub fn diff(old: &Value, new: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    walk("", old, new, &mut ops);
    ops
}

fn walk(path: &str, old: &Value, new: &Value, ops: &mut Vec<Value>) {
    if old == new {
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for k in a.keys() {
                if !b.contains_key(k) {
                    ops.push(json!({"op": "remove", "path": format!("{path}/{}", escape(k))}));
                }
            }
            for (k, v) in b {
                let p = format!("{path}/{}", escape(k));
                match a.get(k) {
                    None => ops.push(json!({"op": "add", "path": p, "value": v})),
                    Some(old_v) => walk(&p, old_v, v, ops),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if b.len() > a.len() && b.ends_with(a) => {
            // Prepended (the native sidecar goes first among init containers).
            for (i, v) in b[..b.len() - a.len()].iter().enumerate() {
                ops.push(json!({"op": "add", "path": format!("{path}/{i}"), "value": v}));
            }
        }
        (Value::Array(a), Value::Array(b)) if b.len() > a.len() && b.starts_with(a) => {
            for v in &b[a.len()..] {
                ops.push(json!({"op": "add", "path": format!("{path}/-"), "value": v}));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                walk(&format!("{path}/{i}"), x, y, ops);
            }
        }
        _ => ops.push(
            json!({"op": "replace", "path": if path.is_empty() { "" } else { path }, "value": new}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_shapes() {
        assert_eq!(escape("minirag.io/inject"), "minirag.io~1inject");
        assert_eq!(escape("a~b/c"), "a~0b~1c");
        let old = json!({"metadata": {"annotations": {"x/y": "1"}}, "spec": {"containers": [{"name": "a"}]}});
        let new = json!({"metadata": {"annotations": {"x/y": "1", "minirag.io/injected": "native"}},
            "spec": {"containers": [{"name": "a", "volumeMounts": [{"name": "l"}]}],
                     "initContainers": [{"name": "agent"}]}});
        let ops = diff(&old, &new);
        assert!(ops.contains(&json!({"op": "add", "path": "/metadata/annotations/minirag.io~1injected", "value": "native"})));
        assert!(ops.contains(&json!({"op": "add", "path": "/spec/containers/0/volumeMounts", "value": [{"name": "l"}]})));
        assert!(ops.contains(
            &json!({"op": "add", "path": "/spec/initContainers", "value": [{"name": "agent"}]})
        ));
        let prepend = diff(&json!({"a": [1, 2]}), &json!({"a": [0, 1, 2]}));
        assert_eq!(
            prepend,
            vec![json!({"op": "add", "path": "/a/0", "value": 0})]
        );
    }
}
