//! Device tokens: `gtd_<64 hex>`, returned by a successful login and sent back with the next
//! logins to the same account from the same device. A device that holds one has proven the
//! password before, so the origin counts its failed attempts on their own counter instead of the
//! account-wide one that anyone can fill (OWASP, "Slow Down Online Guessing Attacks with Device
//! Cookies"). The server keeps only a keyed hash of it.

use crate::opaque::{OpaqueToken, token_kind};

token_kind!(
    /// The device-token kind; its prefix lets secret scanners recognise leaked ones.
    Device,
    "gtd_",
    "DeviceToken"
);

/// A device token.
pub type DeviceToken = OpaqueToken<Device>;
