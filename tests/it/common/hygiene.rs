//! Secret hygiene for every end-to-end test that starts a scaler in-process: all log output,
//! at every level, formatted as text and as JSON, is captured; when a harness ends, none of
//! its secrets (issued tokens, the federated assertion, the Kubernetes token) may appear in
//! it, in a gRPC error the tests received, or in the `Debug` print of its settings.
//! (Child processes: `tests/serve_binary.rs`, `tests/check.rs` and `tests/agent.rs` search
//! their output; the simulated agent package reports any process with a token in its
//! arguments.)

use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::{EnvFilter, fmt::MakeWriter, layer::SubscriberExt as _};

/// Everything logged in this test process, both formats.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

static CAPTURED: OnceLock<Captured> = OnceLock::new();

/// Installs the capturing subscriber once per test binary; later calls return it.
pub fn capture() -> &'static Captured {
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry()
            // Every level of ours and of the clients that carry secrets (reqwest, azure_*,
            // kube); the transport layers below them log frames, not payloads, and at trace
            // they would slow the timing tests.
            .with(EnvFilter::new(
                "trace,h2=info,hyper=info,hyper_util=info,rustls=info,tokio_rustls=info,\
                 tower=info,tonic=info,axum=info,mio=info",
            ))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(captured.clone()),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(captured.clone()),
            );
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in the test binary");
        captured
    })
}

impl Captured {
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The secrets found in the captured output.
    pub fn leaks<'s>(&self, secrets: &'s [String]) -> Vec<&'s str> {
        let text = self.0.lock().unwrap();
        let text = String::from_utf8_lossy(&text);
        secrets
            .iter()
            .filter(|s| !s.is_empty() && text.contains(s.as_str()))
            .map(String::as_str)
            .collect()
    }
}

/// Fails naming where a secret showed up (never the secret itself).
pub fn assert_clean(where_: &str, text: &str, secrets: &[String]) {
    let found = secrets
        .iter()
        .filter(|s| !s.is_empty() && text.contains(s.as_str()))
        .count();
    assert_eq!(found, 0, "{found} secret(s) in {where_}");
}
