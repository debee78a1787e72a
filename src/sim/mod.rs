//! Simulators
