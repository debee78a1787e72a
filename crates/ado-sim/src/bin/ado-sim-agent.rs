//! The simulated Azure Pipelines agent used by tests and benchmarks: `bin/Agent.Listener`,
//! `bin/Agent.Worker` and the updater of a simulated agent package all link here.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    ado_sim::agent::main()
}
