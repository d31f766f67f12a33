//! Reads the `@@bench KIND key=value ...` lines that `scenarios/bench.sh` prints on the
//! emulated host's console.

use std::collections::BTreeMap;

/// One `@@bench` line.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The word after `@@bench`: `boot`, `trip`, `suspend`, `idle`, `floor`, `host`, ...
    pub kind: String,
    /// Its `key=value` words.
    pub fields: BTreeMap<String, String>,
}

impl Record {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// The value of `key` as a number.
    pub fn number(&self, key: &str) -> Option<f64> {
        self.get(key)?
            .parse()
            .ok()
            .filter(|value: &f64| value.is_finite())
    }

    /// Whether `key` is `value`.
    pub fn is(&self, key: &str, value: &str) -> bool {
        self.get(key) == Some(value)
    }
}

/// Every `@@bench` line of `log`, in order. The marker may follow other console output on the
/// same line (a guest line cut off without its newline); words without `=` are ignored.
pub fn records(log: &str) -> Vec<Record> {
    log.lines()
        .filter_map(|line| {
            let rest = &line[line.find("@@bench ")? + "@@bench ".len()..];
            let mut words = rest.split_whitespace();
            let kind = words.next()?.to_owned();
            let fields = words
                .filter_map(|word| word.split_once('='))
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .collect();
            Some(Record { kind, fields })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kinds_and_fields_anywhere_on_a_line() {
        let log = "noise\n\
                   @@bench boot run=boot vmm=ours cpus=1 round=2 boot_ms=3410 timer_us=3390123\n\
                   [guest] cut off@@bench trip run=idle vmm=qemu t0=12.50 t1=14.31 stray\n\
                   @@bench\n\
                   @@result bench-boot pass\n";
        let records = records(log);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].kind, "boot");
        assert!(records[0].is("vmm", "ours"));
        assert_eq!(records[0].number("boot_ms"), Some(3410.0));
        assert_eq!(records[0].number("vmm"), None);
        assert_eq!(records[1].kind, "trip");
        assert_eq!(records[1].number("t1"), Some(14.31));
        assert_eq!(records[1].get("stray"), None);
    }

    #[test]
    fn reads_network_lines_with_an_error_message_last() {
        let log = "@@bench net run=net vmm=ours cpus=1 round=1 disks=0 rng=off test=tcp-rr rc=0 count=2000 mean_us=150 p50_us=140 p99_us=400\n\
                   @@bench net run=net vmm=qemu cpus=1 round=1 disks=0 rng=off test=vsock-rr rc=1 error=Connection reset by peer (os error 104)\n\
                   @@bench net-server ready address=169.254.200.1\n";
        let records = records(log);
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].kind, "net");
        assert!(records[0].is("test", "tcp-rr"));
        assert_eq!(records[0].number("p99_us"), Some(400.0));
        // The error's words after the first carry no `=`: they are no fields.
        assert!(records[1].is("rc", "1"));
        assert_eq!(records[1].get("error"), Some("Connection"));
        assert_eq!(records[1].fields.len(), 9);
        assert_eq!(records[2].kind, "net-server");
    }

    #[test]
    fn reads_snapshot_lines_with_the_steps_a_run_got_through() {
        let log = "@@bench snapshot run=snapshot vmm=ours cpus=1 round=1 disks=0 rng=off memory_mib=2048 rss_kb=80000 guest_rss_kb=71680 overhead_kb=8320 own_ms=100 save_ms=160 stored_kb=75776 restore_ms=50 running_ms=140 reached=done\n\
                   @@bench snapshot run=snapshot vmm=qemu cpus=1 round=1 disks=0 rng=off memory_mib=256  reached=none\n";
        let records = records(log);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].kind, "snapshot");
        assert_eq!(records[0].number("memory_mib"), Some(2048.0));
        assert_eq!(records[0].number("running_ms"), Some(140.0));
        assert!(records[0].is("reached", "done"));
        // An empty figure list leaves only the tag and where the run got.
        assert_eq!(records[1].fields.len(), 8);
        assert_eq!(records[1].number("save_ms"), None);
    }
}
