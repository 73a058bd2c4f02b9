//! Emailed-link tokens: `gtl_<64 hex>`, 256 random bits, single use, bound to one purpose and one
//! account, stored by the origin only as SHA-256 (see [`crate::opaque`]). The link puts the
//! token in the URL fragment (`{base}/verify-email#token=gtl_...`), which browsers never send to
//! a server nor put in `Referer`, so it stays out of server logs.

use crate::opaque::{OpaqueToken, token_kind};

token_kind!(
    /// The emailed-link token kind; its prefix lets secret scanners recognise leaked ones.
    Link,
    "gtl_",
    "LinkToken"
);

/// A token from an emailed link: verification, password reset, email change or its undo.
pub type LinkToken = OpaqueToken<Link>;
