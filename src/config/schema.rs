//! Event-type schemas as the operator writes them: which parameters an event
//! must carry and the format each must have.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One event type's schema.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventTypeConfig {
    /// Parameters that must be present and non-empty.
    pub required: Vec<String>,
    /// Formats of the parameters this type knows; others pass unchecked.
    pub params: BTreeMap<String, ParamSpec>,
    /// Parameter carrying product ids; empty means `params.products`.
    pub product_param: String,
    /// Parameter carrying the click target; empty means `params.redirect`.
    pub redirect_param: String,
    /// When an event of this type is answered relative to its fsync.
    pub durability: Durability,
}

/// When an event is answered relative to the fsync of its block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Answered at once; synced within `storage.sync_interval_ms`.
    #[default]
    Buffered,
    /// Answered after the block holding it is fdatasync'ed.
    Sync,
}

/// The format of one parameter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    /// What the value must look like.
    pub format: Format,
    /// A comma-separated list of values of that format.
    #[serde(default)]
    pub list: bool,
    /// Longest value in bytes (each item, for a list); 0 means the format's
    /// own limit.
    #[serde(default)]
    pub max_len: usize,
    /// The allowed values, for `enum`.
    #[serde(default)]
    pub values: Vec<String>,
}

/// Value formats the audit checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Optional minus, 1 to 18 digits.
    Integer,
    /// Optional minus, digits, optional fraction; 18 digits at most.
    Decimal,
    /// An ISO 4217 currency code (`EUR`).
    Currency,
    /// Unix seconds (10 digits), Unix milliseconds (13 digits) or RFC 3339.
    Timestamp,
    /// An absolute http or https URL.
    Url,
    /// One of `values`.
    Enum,
    /// Any printable text up to `max_len` (default 256).
    String,
    /// Letters, digits and `._:-`, up to `max_len` (default 128).
    Id,
}

impl EventTypeConfig {
    /// Checks names and enum values; errors carry the full key.
    pub fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        for (i, name) in self.required.iter().enumerate() {
            if !super::valid_name(name) {
                return Err((
                    format!("{prefix}.required[{i}]"),
                    "is not a valid parameter name".into(),
                ));
            }
        }
        for (name, spec) in &self.params {
            let key = format!("{prefix}.params.{name}");
            if !super::valid_name(name) {
                return Err((key, "is not a valid parameter name".into()));
            }
            if spec.format == Format::Enum && spec.values.is_empty() {
                return Err((
                    format!("{key}.values"),
                    "an enum needs at least one value".into(),
                ));
            }
            if spec.format != Format::Enum && !spec.values.is_empty() {
                return Err((format!("{key}.values"), "only an enum has values".into()));
            }
        }
        for (field, value) in [
            ("product_param", &self.product_param),
            ("redirect_param", &self.redirect_param),
        ] {
            if !value.is_empty() && !super::valid_name(value) {
                return Err((
                    format!("{prefix}.{field}"),
                    "is not a valid parameter name".into(),
                ));
            }
        }
        Ok(())
    }
}
