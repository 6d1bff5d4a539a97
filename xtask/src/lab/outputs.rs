//! The names of the files the lab's guest scripts (sh/*.sh) write in the
//! results directory, which the lab checks (vfio-zp/tests/common) read:
//! one list both sides use. The tests include this file with `#[path]`, so
//! it depends on nothing. The shell scripts spell the names out; a unit
//! test (lab::tests) checks that every one here is in them.
// Each side reads or writes its own part of these.
#![allow(dead_code)]

// The recorder's run (recorder-start.sh, recorder-stop.sh).
pub const RECORDING: &str = "recording.jsonl";
pub const VERDICTS: &str = "verdicts.json";
pub const RECORDER_LOG: &str = "recorder.log";
pub const CHECK: &str = "check.txt";
pub const CHECK_EXIT: &str = "check-exit";
pub const RECORDER_CAPEFF: &str = "recorder-capeff.txt";
pub const PERF_EVENT_PARANOID: &str = "perf-event-paranoid";
pub const PROMETHEUS_SKIPPED: &str = "prometheus-skipped";
pub const PROMETHEUS_QUERY: &str = "prometheus-query.json";
pub const WRK: &str = "wrk.txt";
pub const HTTP_GARBAGE: &str = "http-garbage.txt";
pub const HTTP_POST: &str = "http-post.txt";
pub const HTTP_404: &str = "http-404.txt";
pub const HEALTHZ_AFTER: &str = "healthz-after.txt";
pub const SNAPSHOT: &str = "snapshot.json";
pub const METRICS: &str = "metrics.txt";
pub const TOP: &str = "top.txt";
/// `check --agent` against the running recorder: its probe decisions.
pub const CHECK_AGENT: &str = "check-agent.txt";
pub const TOP_TMUX: &str = "top-tmux.txt";
pub const TOP_TMUX_SORTED: &str = "top-tmux-sorted.txt";
pub const TOP_TMUX_SKIPPED: &str = "top-tmux-skipped";
pub const STOP_UPTIME: &str = "stop-uptime";
pub const KPROBE_EVENTS_AFTER_STOP: &str = "kprobe-events-after-stop.txt";
pub const KPROBE_EVENTS_AFTER_KILL: &str = "kprobe-events-after-kill.txt";
pub const KPROBE_EVENTS_FINAL: &str = "kprobe-events-final.txt";
pub const TOP_LOCAL: &str = "top-local.txt";

// The type1 reload under the recorder (reload-type1.sh).
pub const TYPE1_STATE_UNLOADED: &str = "type1-state-unloaded.txt";
pub const REATTACH_UPTIME: &str = "reattach-uptime";

// The ring buffer flood (flood.sh).
pub const FLOOD_RECORDING: &str = "flood.jsonl";
pub const FLOOD_VERDICTS: &str = "flood-verdicts.json";
pub const FLOOD_METRICS: &str = "flood-metrics.txt";
pub const FLOOD_RECORDER_LOG: &str = "flood-recorder.log";

// Restart continuity (restart.sh).
pub const PINS_BEFORE: &str = "pins-before.txt";
pub const PINS_AFTER: &str = "pins-after.txt";
pub const LATE_STATE_BEFORE: &str = "late-state-before.txt";
pub const LATE_LOAD_UPTIME: &str = "late-load-uptime";
pub const AGENT_STOP_UPTIME: &str = "agent-stop-uptime";
pub const KPROBE_EVENTS_AFTER_AGENT_STOP: &str = "kprobe-events-after-agent-stop.txt";
pub const AGENT_OLD_LOG: &str = "agent-old.log";
pub const AGENT_1_LOG: &str = "agent-1.log";
pub const AGENT_2_LOG: &str = "agent-2.log";
pub const AGENT_3_LOG: &str = "agent-3.log";
pub const RESTART_1: &str = "restart-1.json";
pub const RESTART_2: &str = "restart-2.json";
pub const RESTART_3: &str = "restart-3.json";
pub const RESTART_FINAL: &str = "restart-final.json";
pub const RESTART_TRUTH: &str = "restart-truth.json";
pub const STATE_DIR: &str = "state-dir.txt";

// The unit's sandbox (sandbox.sh).
pub const SANDBOX_SKIPPED: &str = "sandbox-skipped";
pub const SANDBOX_EXIT: &str = "sandbox-exit";
pub const SANDBOX_AGENT_LOG: &str = "sandbox-agent.log";
pub const SANDBOX_NETNS: &str = "sandbox-netns.txt";
pub const SANDBOX_SNAPSHOT: &str = "sandbox-snapshot.json";
pub const SANDBOX_STRACE: &str = "sandbox-strace.txt";
pub const SANDBOX_REATTACH_UPTIME: &str = "sandbox-reattach-uptime";
