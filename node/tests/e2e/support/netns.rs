//! A network namespace the tests make: `lo` and one ordinary interface (a veth end with
//! `CLIENT_IP` as a host's eth0, the default route), and an nftables table with the rules a
//! test asks for (UDP dropped, a port closed...). The outer test runs an inner test, this
//! same binary, inside it: every process the inner test starts (nodes, Chromium, the load
//! tester) inherits the namespace and its firewall. Deleted when dropped.

use std::process::Command;

/// The namespace's ordinary interface address: where its clients' checks come from.
pub const CLIENT_IP: &str = "10.99.0.1";

pub struct Namespace(String);

impl Namespace {
    /// A namespace named after `purpose` whose firewall applies `rules` (nft rule bodies,
    /// each added to both the input and the output chain).
    pub fn create(purpose: &str, rules: &[&str]) -> Namespace {
        let name = format!("cascade-{purpose}-{}", std::process::id());
        let namespace = Namespace(name.clone());
        run(&["ip", "netns", "add", &name]);
        let mut commands: Vec<String> = [
            "ip link set lo up",
            "ip link add cascade0 type veth peer name cascade1",
            &format!("ip addr add {CLIENT_IP}/24 dev cascade0"),
            "ip link set cascade0 up",
            "ip link set cascade1 up",
            "ip route add default dev cascade0",
            "nft add table inet cascade_test",
            "nft add chain inet cascade_test input { type filter hook input priority 0 ; }",
            "nft add chain inet cascade_test output { type filter hook output priority 0 ; }",
        ]
        .map(String::from)
        .to_vec();
        for rule in rules {
            for chain in ["input", "output"] {
                commands.push(format!("nft add rule inet cascade_test {chain} {rule}"));
            }
        }
        for command in &commands {
            let mut args = vec!["ip", "netns", "exec", &name];
            args.extend(command.split(' '));
            run(&args);
        }
        namespace
    }

    /// Runs the ignored test `inner` of this binary inside the namespace, with `flag` set in
    /// its environment; returns whether it passed.
    pub fn run_test(&self, inner: &str, flag: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .arg(std::env::current_exe().expect("the test binary has a path"))
            .args([
                inner,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(flag, "1")
            .status()
            .expect("the test binary runs inside the namespace")
            .success()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str]) {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{} runs (the test command installs it): {e}", args[0]));
    assert!(
        output.status.success(),
        "`{}` failed (this test needs root, iproute2 and nftables): {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}
