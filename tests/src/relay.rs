//! A TCP relay between the origin and PostgreSQL that a test can cut and restore, to see how the
//! origin behaves when its database disappears and comes back. Cutting closes every relayed
//! connection and refuses new ones, as a stopped server would.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// A relay from a local port to `target`.
pub struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    running: Mutex<Option<JoinSet<()>>>,
}

impl Relay {
    /// Starts relaying from a free local port to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let relay = Relay {
            addr,
            target,
            running: Mutex::new(None),
        };
        relay.run(listener);
        relay
    }

    /// The local address to connect to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every relayed connection and stops listening: connecting now is refused.
    pub fn cut(&self) {
        // Aborting the set aborts the accept loop (closing the listener) and every pipe.
        self.running.lock().unwrap().take();
    }

    /// Listens again on the same port.
    pub async fn restore(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.run(listener);
    }

    fn run(&self, listener: TcpListener) {
        let target = self.target;
        let mut tasks = JoinSet::new();
        let pipes = Arc::new(Mutex::new(JoinSet::new()));
        let accept_pipes = Arc::clone(&pipes);
        tasks.spawn(async move {
            // Owning the pipes here means aborting this task drops (and aborts) all of them.
            let _pipes = PipesGuard(accept_pipes.clone());
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                accept_pipes.lock().unwrap().spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        *self.running.lock().unwrap() = Some(tasks);
    }
}

struct PipesGuard(Arc<Mutex<JoinSet<()>>>);

impl Drop for PipesGuard {
    fn drop(&mut self) {
        self.0.lock().unwrap().abort_all();
    }
}
