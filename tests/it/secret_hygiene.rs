//! The secret-hygiene harness itself (tests/common/hygiene.rs): that it sees what is logged in
//! both formats, and that credential and configuration types print no secret in `Debug` or in
//! their errors. Every in-process end-to-end test runs the harness's check when it ends.

use std::time::Duration;

use crate::common::{Harness, hygiene};
use ado_scaler::{
    auth::{AuthSettings, TokenSource},
    error::Error,
    poller::PollerSettings,
};

/// Something logged at debug and at trace reaches the capture, once as text and once as JSON;
/// so a secret logged anywhere would be found.
#[tokio::test]
async fn the_capture_sees_every_level_in_both_formats() {
    let h = Harness::start(Duration::from_millis(200)).await;
    assert_eq!(h.metric(&h.scaled_job("agents", &[])).await.unwrap(), 0);
    let marker = format!("hygiene-marker-{}", std::process::id());
    tracing::debug!(field = %marker, "debug");
    tracing::trace!("{marker} trace");
    let captured = hygiene::capture();
    assert_eq!(
        captured.leaks(std::slice::from_ref(&marker)),
        [marker.as_str()]
    );
    let text = captured.text();
    assert_eq!(
        text.matches(&marker).count(),
        4,
        "two events, two formats each"
    );
    assert!(
        text.contains("\"level\":\"TRACE\""),
        "JSON lines are captured"
    );
    assert!(text.contains(" TRACE "), "text lines are captured");
    // What the scaler itself logged while serving is there too.
    assert!(text.contains("start polling pool"));
    assert!(captured.len() > 1000);
}

/// Credentials and settings print no secret once a token is held; errors from Entra carry
/// no assertion; a PAT never shows.
#[tokio::test]
async fn credentials_and_settings_print_no_secret() {
    let h = Harness::start_with(PollerSettings::default()).await;
    let http = h.sim.http_client().unwrap();
    let settings = h.sim.auth_settings();
    let source = TokenSource::new(&settings, &http, None).unwrap();
    let token = source.token().await.unwrap();
    let authorization = source.authorization().await.unwrap();
    let mut secrets = h.secrets();
    assert!(
        secrets.iter().any(|s| s == token.secret()),
        "the token is issued"
    );
    let prints = [
        format!("{source:?}"),
        format!("{token:?}"),
        format!("{authorization:?}"),
        format!("{settings:?}"),
        format!("{:?}", h.sim.workload_identity()),
    ];
    for (i, print) in prints.iter().enumerate() {
        hygiene::assert_clean(&format!("Debug print {i}"), print, &secrets);
    }

    // Entra refuses the assertion: the error explains, and holds no assertion or token.
    h.sim.entra.refuse_assertions(true);
    h.sim.entra.set_token_lifetime(Duration::from_secs(1));
    let refused = TokenSource::new(&settings, &http, None).unwrap();
    let error = refused.token().await.unwrap_err();
    assert!(matches!(error, Error::Token { .. }), "{error}");
    let status = tonic::Status::from(error.clone());
    for (what, text) in [
        ("Display", error.to_string()),
        ("Debug", format!("{error:?}")),
        ("gRPC status", format!("{status:?}")),
    ] {
        hygiene::assert_clean(what, &text, &secrets);
    }
    assert!(error.to_string().contains("AADSTS700213"), "{error}");

    // A PAT (local development): read from its file, printed nowhere.
    let pat = "pat-0123456789abcdefghijklmnopqrstuvwxyz";
    let file = std::env::temp_dir().join(format!("ado-scaler-hygiene-pat-{}", std::process::id()));
    std::fs::write(&file, format!("{pat}\n")).unwrap();
    secrets.push(pat.to_owned());
    let pat_settings = AuthSettings::Pat { file: file.clone() };
    let pat_source = TokenSource::new(&pat_settings, &http, None).unwrap();
    let header = pat_source.authorization().await.unwrap();
    for print in [
        format!("{pat_settings:?}"),
        format!("{pat_source:?}"),
        format!("{header:?}"),
        format!("{:?}", pat_source.token().await.unwrap()),
    ] {
        hygiene::assert_clean("a PAT credential's Debug print", &print, &secrets);
    }
    let _ = std::fs::remove_file(file);
    assert!(hygiene::capture().leaks(&secrets).is_empty());
}
