//! A software passkey: a platform authenticator holding discoverable ES256 (P-256) credentials
//! that answers WebAuthn ceremonies as a browser hands them to the server (the JSON forms of
//! `navigator.credentials.create()` and `.get()`), with `none` attestation, user verification and
//! a signature counter per credential. Cloning it models a cloned authenticator: both copies sign,
//! their counters diverge.
//!
//! Built on OpenSSL and CBOR, which webauthn-rs already brings, so tests run real ceremonies
//! against the real verifier with no dependency of their own.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::sha::sha256;
use openssl::sign::Signer;
use serde_cbor_2::Value as Cbor;
use serde_json::{Value, json};

/// Authenticator data flags (WebAuthn Level 3 section 6.1).
const USER_PRESENT: u8 = 0x01;
const USER_VERIFIED: u8 = 0x04;
const ATTESTED_CREDENTIAL: u8 = 0x40;

#[derive(Clone)]
struct Credential {
    id: Vec<u8>,
    rp_id: String,
    user_handle: Vec<u8>,
    key: EcKey<Private>,
    counter: u32,
}

/// The authenticator.
#[derive(Clone, Default)]
pub struct SoftPasskey {
    credentials: Vec<Credential>,
    /// Whether the user verifies (PIN or biometric); on by default.
    pub skip_user_verification: bool,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .expect("base64url from the server")
}

fn client_data(kind: &str, challenge: &str, origin: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": kind,
        "challenge": challenge,
        "origin": origin,
        "crossOrigin": false,
    }))
    .unwrap()
}

impl SoftPasskey {
    /// An authenticator with no credential yet.
    pub fn new() -> Self {
        SoftPasskey::default()
    }

    fn flags(&self) -> u8 {
        if self.skip_user_verification {
            USER_PRESENT
        } else {
            USER_PRESENT | USER_VERIFIED
        }
    }

    /// Answers `navigator.credentials.create()` with `options` (`{"publicKey": {...}}`) on a page
    /// at `origin`: a new credential, as the JSON a browser would post.
    pub fn register(&mut self, options: &Value, origin: &str) -> Value {
        let options = &options["publicKey"];
        let rp_id = options["rp"]["id"].as_str().expect("rp.id").to_owned();
        let challenge = options["challenge"].as_str().expect("challenge");
        let user_handle = unb64(options["user"]["id"].as_str().expect("user.id"));
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = EcKey::generate(&group).unwrap();
        let mut id = vec![0u8; 32];
        openssl::rand::rand_bytes(&mut id).unwrap();

        let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
        let mut context = BigNumContext::new().unwrap();
        key.public_key()
            .affine_coordinates(&group, &mut x, &mut y, &mut context)
            .unwrap();
        // RFC 9053 section 7.1.1 / RFC 8152: kty EC2 (2), alg ES256 (-7), crv P-256 (1), x, y.
        let cose_key = Cbor::Map(
            [
                (Cbor::Integer(1), Cbor::Integer(2)),
                (Cbor::Integer(3), Cbor::Integer(-7)),
                (Cbor::Integer(-1), Cbor::Integer(1)),
                (Cbor::Integer(-2), Cbor::Bytes(x.to_vec_padded(32).unwrap())),
                (Cbor::Integer(-3), Cbor::Bytes(y.to_vec_padded(32).unwrap())),
            ]
            .into_iter()
            .collect(),
        );
        let mut auth_data = sha256(rp_id.as_bytes()).to_vec();
        auth_data.push(self.flags() | ATTESTED_CREDENTIAL);
        auth_data.extend_from_slice(&0u32.to_be_bytes());
        auth_data.extend_from_slice(&[0u8; 16]); // AAGUID: none claimed
        auth_data.extend_from_slice(&(id.len() as u16).to_be_bytes());
        auth_data.extend_from_slice(&id);
        auth_data.extend_from_slice(&serde_cbor_2::to_vec(&cose_key).unwrap());
        let attestation = Cbor::Map(
            [
                (Cbor::Text("fmt".into()), Cbor::Text("none".into())),
                (Cbor::Text("attStmt".into()), Cbor::Map(Default::default())),
                (Cbor::Text("authData".into()), Cbor::Bytes(auth_data)),
            ]
            .into_iter()
            .collect(),
        );
        let client_data = client_data("webauthn.create", challenge, origin);
        self.credentials.push(Credential {
            id: id.clone(),
            rp_id,
            user_handle,
            key,
            counter: 0,
        });
        json!({
            "id": b64(&id),
            "rawId": b64(&id),
            "type": "public-key",
            "response": {
                "attestationObject": b64(&serde_cbor_2::to_vec(&attestation).unwrap()),
                "clientDataJSON": b64(&client_data),
            },
            "extensions": {},
        })
    }

    /// Answers `navigator.credentials.get()` with `options` on a page at `origin`: an assertion
    /// by the first credential for the relying party that the options allow (any, when they
    /// list none: a discoverable sign-in).
    pub fn sign_in(&mut self, options: &Value, origin: &str) -> Value {
        let allowed: Vec<Vec<u8>> = options["publicKey"]["allowCredentials"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|c| c["id"].as_str().map(unb64))
                    .collect()
            })
            .unwrap_or_default();
        let rp_id = options["publicKey"]["rpId"]
            .as_str()
            .expect("rpId")
            .to_owned();
        let index = self
            .credentials
            .iter()
            .position(|c| c.rp_id == rp_id && (allowed.is_empty() || allowed.contains(&c.id)))
            .expect("a credential the options allow");
        self.assert_with(index, options, origin, None)
    }

    /// An assertion by this authenticator's `index`th credential whatever the options allow,
    /// naming `user_handle` instead of its own when given: what a forger would send.
    pub fn assert_with(
        &mut self,
        index: usize,
        options: &Value,
        origin: &str,
        user_handle: Option<&[u8]>,
    ) -> Value {
        let flags = self.flags();
        let challenge = options["publicKey"]["challenge"]
            .as_str()
            .expect("challenge");
        let credential = &mut self.credentials[index];
        credential.counter += 1;
        let mut auth_data = sha256(credential.rp_id.as_bytes()).to_vec();
        auth_data.push(flags);
        auth_data.extend_from_slice(&credential.counter.to_be_bytes());
        let client_data = client_data("webauthn.get", challenge, origin);
        let key = PKey::from_ec_key(credential.key.clone()).unwrap();
        let mut signer = Signer::new(MessageDigest::sha256(), &key).unwrap();
        signer.update(&auth_data).unwrap();
        signer.update(&sha256(&client_data)).unwrap();
        let signature = signer.sign_to_vec().unwrap();
        json!({
            "id": b64(&credential.id),
            "rawId": b64(&credential.id),
            "type": "public-key",
            "response": {
                "authenticatorData": b64(&auth_data),
                "clientDataJSON": b64(&client_data),
                "signature": b64(&signature),
                "userHandle": b64(user_handle.unwrap_or(&credential.user_handle)),
            },
            "extensions": {},
        })
    }
}
