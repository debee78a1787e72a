//! A snapshot of the process table and the questions the entrypoint asks of it: is a job
//! running (an `Agent.Worker` below us), which process is the listener, is the agent's
//! process group empty yet. The queries are pure, so they are tested by tables; only
//! [`ProcTable::read`] touches `/proc`.

/// The real agent's process names, as `/proc/PID/comm` shows them (native .NET app hosts).
pub const LISTENER_COMM: &str = "Agent.Listener";
pub const WORKER_COMM: &str = "Agent.Worker";

/// One live process: what `/proc/PID/stat` says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    pub comm: String,
}

/// Live processes (zombies left out: they have exited, only their status is left to reap).
#[derive(Debug, Clone, Default)]
pub struct ProcTable(Vec<Proc>);

impl ProcTable {
    pub fn new(procs: Vec<Proc>) -> Self {
        Self(procs)
    }

    /// Reads `/proc`. Processes that vanish while it is read are skipped.
    pub fn read() -> Self {
        let Ok(all) = procfs::process::all_processes() else {
            return Self::default();
        };
        Self(
            all.filter_map(|p| p.ok()?.stat().ok())
                .filter(|s| s.state != 'Z' && s.state != 'X')
                .map(|s| Proc {
                    pid: s.pid,
                    ppid: s.ppid,
                    pgrp: s.pgrp,
                    comm: s.comm,
                })
                .collect(),
        )
    }

    /// Every process below `root` (children, their children, …), not `root` itself.
    pub fn descendants(&self, root: i32) -> Vec<&Proc> {
        let mut found: Vec<&Proc> = Vec::new();
        let mut frontier = vec![root];
        while let Some(parent) = frontier.pop() {
            for p in self.0.iter().filter(|p| p.ppid == parent && p.pid != root) {
                if !found.iter().any(|f| f.pid == p.pid) {
                    found.push(p);
                    frontier.push(p.pid);
                }
            }
        }
        found
    }

    /// A job is running while an `Agent.Worker` exists below `root`.
    pub fn job_running(&self, root: i32) -> bool {
        self.descendants(root).iter().any(|p| p.comm == WORKER_COMM)
    }

    /// The process to interrupt: the `Agent.Listener` below `root` (`run.sh` leaves one
    /// between us and it), else `child`, for a layout without one.
    pub fn listener_of(&self, root: i32, child: i32) -> i32 {
        self.descendants(root)
            .iter()
            .find(|p| p.comm == LISTENER_COMM)
            .map_or(child, |p| p.pid)
    }

    /// Live members of process group `pgrp`, wherever they were reparented.
    pub fn group(&self, pgrp: i32) -> Vec<&Proc> {
        self.0.iter().filter(|p| p.pgrp == pgrp).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, ppid: i32, pgrp: i32, comm: &str) -> Proc {
        Proc {
            pid,
            ppid,
            pgrp,
            comm: comm.into(),
        }
    }

    /// 100 is the entrypoint; 200 run.sh (group 200); 201 the listener; 202 a worker; 203 a
    /// job step; 300 an orphaned step reparented to us, still in group 200; 900 unrelated.
    fn pod() -> ProcTable {
        ProcTable::new(vec![
            p(1, 0, 1, "init"),
            p(100, 1, 100, "ado-scaler"),
            p(200, 100, 200, "run.sh"),
            p(201, 200, 200, "Agent.Listener"),
            p(202, 201, 200, "Agent.Worker"),
            p(203, 202, 200, "bash"),
            p(300, 100, 200, "sleep"),
            p(900, 1, 900, "Agent.Worker"),
        ])
    }

    #[test]
    fn descendants_follow_the_tree_from_the_root_only() {
        let table = pod();
        let mut below: Vec<i32> = table.descendants(100).iter().map(|p| p.pid).collect();
        below.sort();
        assert_eq!(below, [200, 201, 202, 203, 300]);
        let below: Vec<i32> = table.descendants(202).iter().map(|p| p.pid).collect();
        assert_eq!(below, [203]);
        assert!(table.descendants(203).is_empty());
        assert!(table.descendants(4242).is_empty());
    }

    #[test]
    fn a_cycle_in_a_torn_read_does_not_loop() {
        // /proc is read process by process; a pid reused mid-read can make a cycle.
        let table = ProcTable::new(vec![p(10, 11, 10, "a"), p(11, 10, 10, "b")]);
        let below: Vec<i32> = table.descendants(10).iter().map(|p| p.pid).collect();
        assert_eq!(below, [11]);
    }

    #[test]
    fn job_running_means_a_worker_below_us() {
        let table = pod();
        assert!(table.job_running(100));
        assert!(table.job_running(201));
        assert!(
            !table.job_running(203),
            "a worker above is not below (and 900 is someone else's)"
        );
        let idle = ProcTable::new(vec![
            p(100, 1, 100, "ado-scaler"),
            p(201, 100, 201, "Agent.Listener"),
        ]);
        assert!(!idle.job_running(100));
    }

    #[test]
    fn the_listener_is_found_behind_run_sh_or_is_the_child() {
        assert_eq!(pod().listener_of(100, 200), 201);
        let no_listener = ProcTable::new(vec![p(100, 1, 100, "x"), p(200, 100, 200, "run.sh")]);
        assert_eq!(no_listener.listener_of(100, 200), 200);
        // An Agent.Listener that is not ours is never picked.
        let foreign = ProcTable::new(vec![p(200, 100, 200, "sh"), p(5, 1, 5, "Agent.Listener")]);
        assert_eq!(foreign.listener_of(100, 200), 200);
    }

    #[test]
    fn group_members_include_reparented_orphans() {
        let table = pod();
        let mut members: Vec<i32> = table.group(200).iter().map(|p| p.pid).collect();
        members.sort();
        assert_eq!(members, [200, 201, 202, 203, 300]);
        assert!(table.group(4242).is_empty());
    }

    #[test]
    fn reading_proc_finds_this_process_but_no_zombie() {
        // A child that has exited and is not yet waited for is a zombie.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let zombie = child.id() as i32;
        let stat = || std::fs::read_to_string(format!("/proc/{zombie}/stat")).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !stat().contains(") Z ") {
            assert!(std::time::Instant::now() < deadline, "child never exited");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let me = std::process::id() as i32;
        let table = ProcTable::read();
        assert!(table.0.iter().any(|p| p.pid == me));
        assert!(
            !table.0.iter().any(|p| p.pid == zombie),
            "zombies are not live"
        );
        child.wait().unwrap();
    }
}
