//! Every integration test of the production crate, in one binary (one link of the crate,
//! one shared harness): the real scaler, agent entrypoint and `check` against the simulators
//! of `ado-sim`, and deploy/ as a cluster gets it.

mod common;

mod access;
mod agent;
mod check;
mod cli;
mod deploy;
mod dockerfile;
mod faults;
mod gc;
mod parallelism;
mod properties;
mod registrar;
mod scale_from_zero;
mod scaler_e2e;
mod secret_hygiene;
mod serve_binary;
mod tls;
