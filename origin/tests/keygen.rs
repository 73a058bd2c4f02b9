//! `gatehouse-origin keygen` writes a key other tools read: OpenSSL derives from it the very
//! public key the origin publishes (OpenSSL 3.0 cannot read PKCS#8 version 2, which an earlier
//! release wrote). Needs the `openssl` command, as any machine that makes keys by hand has.

use std::process::{Command, Stdio};

use gatehouse_shared::signing::{TokenSigner, public_key_from_pem};

#[test]
fn openssl_reads_the_key_keygen_writes() {
    let generated = Command::new(env!("CARGO_BIN_EXE_gatehouse-origin"))
        .arg("keygen")
        .output()
        .expect("gatehouse-origin keygen runs");
    assert!(generated.status.success());
    let pem = String::from_utf8(generated.stdout).unwrap();
    let signer = TokenSigner::from_pkcs8_pem(&pem).expect("the origin reads its own key");
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("keygen-{}.pem", std::process::id()));
    std::fs::write(&path, &pem).unwrap();

    let public = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&path)
        .stderr(Stdio::inherit())
        .output()
        .expect("the openssl command is installed");
    std::fs::remove_file(&path).unwrap();

    assert!(public.status.success(), "openssl refused the key");
    let public = String::from_utf8(public.stdout).unwrap();
    assert_eq!(public_key_from_pem(&public), Ok(signer.verifying_key()));
}
