//! Event parameters from request bodies: one JSON object (`POST /e` with
//! `Content-Type: application/json`) or a JSON array of them (`/batch`),
//! into the same `Params` a query string fills. simd-json parses in place,
//! so the body buffer is scratch afterwards. These bytes are untrusted:
//! nothing here may panic (`fuzz/fuzz_targets/json_body.rs`).

use simd_json::{BorrowedValue, Buffers, StaticNode};

use crate::http::Params;

/// Largest number of events in one `/batch` request.
pub const MAX_BATCH_ITEMS: usize = 10_000;

/// Why a `/batch` body was refused as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchError {
    /// Not valid JSON (400).
    NotJson,
    /// Valid JSON, but not an array (400).
    NotArray,
    /// More than `MAX_BATCH_ITEMS` events (413).
    TooMany,
}

/// The events of a `/batch` body, each still to be read with
/// `item_params`.
pub fn batch_items<'a>(
    body: &'a mut [u8],
    buffers: &mut Buffers,
) -> Result<Vec<BorrowedValue<'a>>, BatchError> {
    match simd_json::to_borrowed_value_with_buffers(body, buffers) {
        Ok(BorrowedValue::Array(items)) if items.len() > MAX_BATCH_ITEMS => {
            Err(BatchError::TooMany)
        }
        Ok(BorrowedValue::Array(items)) => Ok(*items),
        Ok(_) => Err(BatchError::NotArray),
        Err(_) => Err(BatchError::NotJson),
    }
}

/// Fills `params` from one batch event; false when it is not an object of
/// at most `max` scalar or list values.
pub fn item_params(item: &BorrowedValue<'_>, params: &mut Params, max: usize) -> bool {
    match item {
        BorrowedValue::Object(obj) => fill_params(obj, params, max),
        _ => false,
    }
}

/// Fills `params` from a body holding one JSON object; false when the body
/// is not one, or holds more than `max` values or a nested object.
pub fn object_params(
    body: &mut [u8],
    params: &mut Params,
    max: usize,
    buffers: &mut Buffers,
) -> bool {
    match simd_json::to_borrowed_value_with_buffers(body, buffers) {
        Ok(BorrowedValue::Object(obj)) => fill_params(&obj, params, max),
        _ => false,
    }
}

/// Copies a JSON object's members into `params`: strings as they are,
/// numbers and booleans as their text, lists of scalars comma-joined.
fn fill_params(obj: &simd_json::borrowed::Object<'_>, params: &mut Params, max: usize) -> bool {
    for (key, value) in obj.iter() {
        let begun = params.begin_value(key.as_bytes());
        let ok = match value {
            BorrowedValue::String(s) => {
                params.extend_value(s.as_bytes());
                true
            }
            BorrowedValue::Static(node) => {
                push_scalar(params, node);
                true
            }
            BorrowedValue::Array(list) => list.iter().enumerate().all(|(i, v)| {
                if i > 0 {
                    params.extend_value(b",");
                }
                match v {
                    BorrowedValue::String(s) => params.extend_value(s.as_bytes()),
                    BorrowedValue::Static(node) => push_scalar(params, node),
                    _ => return false,
                }
                true
            }),
            BorrowedValue::Object(_) => false,
        };
        if !ok || params.finish_value(begun, max).is_err() {
            return false;
        }
    }
    true
}

fn push_scalar(params: &mut Params, node: &StaticNode) {
    match *node {
        StaticNode::I64(n) => params.extend_value(itoa::Buffer::new().format(n).as_bytes()),
        StaticNode::U64(n) => params.extend_value(itoa::Buffer::new().format(n).as_bytes()),
        StaticNode::F64(f) => params.extend_value(ryu::Buffer::new().format(f).as_bytes()),
        StaticNode::Bool(b) => params.extend_value(if b { b"true" } else { b"false" }),
        StaticNode::Null => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each event's parameters as text, or `None` when it was refused.
    type Events = Vec<Option<Vec<(String, String)>>>;

    fn batch(body: &str) -> Result<Events, BatchError> {
        let mut body = body.as_bytes().to_vec();
        let mut buffers = Buffers::default();
        let items = batch_items(&mut body, &mut buffers)?;
        let mut params = Params::with_capacity(8);
        Ok(items
            .iter()
            .map(|item| {
                params.clear();
                item_params(item, &mut params, 8).then(|| {
                    params
                        .iter()
                        .map(|(k, v)| {
                            (
                                String::from_utf8_lossy(k).into_owned(),
                                String::from_utf8_lossy(v).into_owned(),
                            )
                        })
                        .collect()
                })
            })
            .collect())
    }

    #[test]
    fn batch_bodies_become_params_or_precise_refusals() {
        let kv = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            batch(r#"[{"adv":"shop","pid":["a",2,true],"value":9.5,"n":null},7,{"x":{"y":1}}]"#),
            Ok(vec![
                kv(&[
                    ("adv", "shop"),
                    ("pid", "a,2,true"),
                    ("value", "9.5"),
                    ("n", "")
                ]),
                None,
                None,
            ])
        );
        assert_eq!(batch(r#"{"adv":"shop"}"#), Err(BatchError::NotArray));
        assert_eq!(batch(r#"[{"adv":"#), Err(BatchError::NotJson));
        let many = format!("[{}0]", "0,".repeat(MAX_BATCH_ITEMS));
        assert_eq!(batch(&many), Err(BatchError::TooMany));
        let most = format!("[{}0]", "0,".repeat(MAX_BATCH_ITEMS - 1));
        assert_eq!(batch(&most).map(|v| v.len()), Ok(MAX_BATCH_ITEMS));
    }

    #[test]
    fn an_object_body_fills_params_within_the_limit() {
        let mut params = Params::with_capacity(2);
        let mut buffers = Buffers::default();
        let mut body = br#"{"adv":"shop","ev":"purchase"}"#.to_vec();
        assert!(object_params(&mut body, &mut params, 2, &mut buffers));
        assert_eq!(params.get("ev"), Some(&b"purchase"[..]));
        params.clear();
        let mut body = br#"{"a":1,"b":2,"c":3}"#.to_vec();
        assert!(!object_params(&mut body, &mut params, 2, &mut buffers));
        params.clear();
        let mut body = br#"["adv"]"#.to_vec();
        assert!(!object_params(&mut body, &mut params, 2, &mut buffers));
    }
}
