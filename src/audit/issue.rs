//! Issue codes: what the audit found wrong with an event. Findings are
//! values, not errors; an event with issues is still recorded.

/// One kind of finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueCode {
    /// A parameter the event type requires is absent or empty.
    MissingParam,
    /// A parameter does not have its declared format.
    BadFormat,
    /// A product id is not in the advertiser's catalog.
    UnknownProduct,
    /// The event type is not configured.
    UnknownEventType,
    /// The advertiser is neither configured nor has a catalog.
    UnknownAdvertiser,
    /// The event names products but the advertiser has no catalog.
    NoCatalog,
    /// The click target is not allowed for the advertiser and not signed.
    DisallowedRedirect,
    /// A parameter appeared more than once; the first value was kept.
    DuplicateParam,
}

impl IssueCode {
    /// Every code, in a stable order (metrics, views).
    pub const ALL: [IssueCode; 8] = [
        IssueCode::MissingParam,
        IssueCode::BadFormat,
        IssueCode::UnknownProduct,
        IssueCode::UnknownEventType,
        IssueCode::UnknownAdvertiser,
        IssueCode::NoCatalog,
        IssueCode::DisallowedRedirect,
        IssueCode::DuplicateParam,
    ];

    /// The code as it appears in records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::MissingParam => "missing_param",
            IssueCode::BadFormat => "bad_format",
            IssueCode::UnknownProduct => "unknown_product",
            IssueCode::UnknownEventType => "unknown_event_type",
            IssueCode::UnknownAdvertiser => "unknown_advertiser",
            IssueCode::NoCatalog => "no_catalog",
            IssueCode::DisallowedRedirect => "disallowed_redirect",
            IssueCode::DuplicateParam => "duplicate_param",
        }
    }

    /// Position in [`IssueCode::ALL`], for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One finding: the code, the parameter it concerns and, where it helps the
/// integrator, the offending value (an unknown product id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Issue<'a> {
    /// What is wrong.
    pub code: IssueCode,
    /// The parameter concerned.
    pub param: &'a [u8],
    /// The offending value, or empty.
    pub value: &'a [u8],
}

/// At most [`Issues::CAP`] findings on the stack; more are counted, not kept.
/// Places past `len` are never read. They start as `None`, which costs a
/// byte each to set up (the code's spare values hold it): a list of
/// `Issue`s filled with a placeholder was set up by copying 640 bytes per
/// event.
#[derive(Debug, Clone)]
pub struct Issues<'a> {
    items: [Option<Issue<'a>>; Issues::CAP],
    len: usize,
    dropped: usize,
}

impl Default for Issues<'_> {
    fn default() -> Self {
        Issues {
            items: [None; Issues::CAP],
            len: 0,
            dropped: 0,
        }
    }
}

impl<'a> Issues<'a> {
    /// Findings kept per event.
    pub const CAP: usize = 16;

    /// Adds a finding, or counts it when full.
    pub fn push(&mut self, code: IssueCode, param: &'a [u8], value: &'a [u8]) {
        if self.len < Self::CAP {
            self.items[self.len] = Some(Issue { code, param, value });
            self.len += 1;
        } else {
            self.dropped += 1;
        }
    }

    /// The kept findings, in the order found.
    pub fn iter(&self) -> impl Iterator<Item = &Issue<'a>> {
        self.items[..self.len].iter().flatten()
    }

    /// How many findings are kept.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Findings beyond [`Issues::CAP`].
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    /// Forgets every finding.
    pub fn clear(&mut self) {
        (self.len, self.dropped) = (0, 0);
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
