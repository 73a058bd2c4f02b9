//! A real SMTP server for the tests: maildev (pinned in `edge/package.json`, installed by
//! `cargo xtask test`), one per test on ports of its own, read through its REST API. Nothing in
//! the mail path is faked: the origin's courier speaks SMTP to it.

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::process::{Child, Command};

use crate::edge::{KillGroup, edge_dir};

/// How long maildev may take to start, and a mail to arrive.
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// A running maildev.
pub struct MailServer {
    /// Its SMTP port on 127.0.0.1.
    pub smtp_port: u16,
    /// Its REST API's port on 127.0.0.1.
    pub web_port: u16,
    client: reqwest::Client,
    _process: Child,
    _group: KillGroup,
}

/// A delivered mail, as maildev parsed it.
#[derive(Debug, Clone, Deserialize)]
pub struct Received {
    /// The recipients.
    pub to: Vec<Address>,
    /// The subject.
    pub subject: String,
    /// The plain-text part.
    #[serde(default)]
    pub text: String,
    /// The HTML part.
    #[serde(default)]
    pub html: String,
    /// The headers, names in lower case.
    pub headers: serde_json::Map<String, serde_json::Value>,
}

/// One address of a mail.
#[derive(Debug, Clone, Deserialize)]
pub struct Address {
    /// The address itself.
    pub address: String,
}

impl Received {
    /// The link token in the mail's link (`#token=gtl_...`); panics when there is none.
    pub fn link_token(&self) -> String {
        let start = self.text.find("#token=").expect("the mail carries a link") + "#token=".len();
        self.text[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    }

    /// The `Message-ID` header.
    pub fn message_id(&self) -> &str {
        self.headers["message-id"].as_str().expect("a Message-ID")
    }

    fn is_to(&self, address: &str) -> bool {
        self.to
            .iter()
            .any(|to| to.address.eq_ignore_ascii_case(address))
    }
}

impl MailServer {
    /// Starts maildev on free ports; panics, naming the fix, when it is not installed.
    pub async fn start() -> MailServer {
        MailServer::start_on(free_port(), free_port()).await
    }

    /// Starts maildev on the given ports (to bring one back where the origin expects it).
    pub async fn start_on(smtp_port: u16, web_port: u16) -> MailServer {
        let binary = edge_dir().join("node_modules/.bin/maildev");
        assert!(
            binary.exists(),
            "maildev is not installed: run `cargo xtask test` (it runs npm ci in edge/)"
        );
        let process = Command::new(binary)
            .args(["--ip", "127.0.0.1", "--web-ip", "127.0.0.1", "--silent"])
            .args([
                "--smtp",
                &smtp_port.to_string(),
                "--web",
                &web_port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("maildev starts");
        let group = KillGroup(process.id().expect("maildev is running"));
        let server = MailServer {
            smtp_port,
            web_port,
            client: reqwest::Client::new(),
            _process: process,
            _group: group,
        };
        let healthy = async {
            loop {
                let health = server.client.get(server.api("/healthz")).send().await;
                if health.is_ok_and(|r| r.status().is_success()) {
                    break;
                }
                tokio::time::sleep(POLL).await;
            }
        };
        tokio::time::timeout(WAIT, healthy)
            .await
            .expect("maildev answered its health check in time");
        server
    }

    /// Where the origin sends mail: plain SMTP on loopback.
    pub fn smtp_url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.smtp_port)
    }

    fn api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/api{path}", self.web_port)
    }

    /// Every mail received so far.
    pub async fn received(&self) -> Vec<Received> {
        self.client
            .get(self.api("/email"))
            .send()
            .await
            .expect("maildev answers")
            .json()
            .await
            .expect("maildev lists mail as JSON")
    }

    /// The mails received so far for `address`.
    pub async fn received_by(&self, address: &str) -> Vec<Received> {
        let mut mails = self.received().await;
        mails.retain(|mail| mail.is_to(address));
        mails
    }

    /// Waits until `address` has received `count` mails, and returns them; panics after 30 s.
    pub async fn wait_for(&self, address: &str, count: usize) -> Vec<Received> {
        let arrived = async {
            loop {
                let mails = self.received_by(address).await;
                if mails.len() >= count {
                    break mails;
                }
                tokio::time::sleep(POLL).await;
            }
        };
        tokio::time::timeout(WAIT, arrived)
            .await
            .unwrap_or_else(|_| panic!("{count} mails for {address} did not arrive in time"))
    }

    /// Waits for the one mail to `address` whose subject contains `subject`.
    pub async fn wait_for_subject(&self, address: &str, subject: &str) -> Received {
        let arrived = async {
            loop {
                let mails = self.received_by(address).await;
                if let Some(mail) = mails.into_iter().find(|m| m.subject.contains(subject)) {
                    break mail;
                }
                tokio::time::sleep(POLL).await;
            }
        };
        tokio::time::timeout(WAIT, arrived)
            .await
            .unwrap_or_else(|_| panic!("no mail {subject:?} for {address} in time"))
    }
}

/// A port free on 127.0.0.1 a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}
