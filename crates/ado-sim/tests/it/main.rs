//! The simulators' own fidelity tests: they answer the production clients as the real
//! services do.

mod kube;
