//! The demo's tests: the KEDA emulator over scripted runs, and the dashboard evaluated by a
//! real Prometheus scraping the demo's scaler.

mod dashboard;
mod emulator;
