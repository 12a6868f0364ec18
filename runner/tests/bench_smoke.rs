//! The benchmark harness, at tiny sizes, so it cannot rot. It asserts that
//! every measurement ran, never how fast.

#[path = "../benches/perf.rs"]
#[allow(dead_code, clippy::all)]
mod perf;

#[test]
fn the_benchmark_runs_end_to_end_at_smoke_size() {
    let rows = perf::run(&perf::Config::smoke());
    let measures: Vec<&str> = rows.iter().map(|row| row.what.as_str()).collect();
    for expected in [
        "download",
        "on tmpfs",
        "on disk",
        "TCP copy",
        "`phile get --single` download",
        "scenario download in `phile-run`",
        "SHA-1",
        "peak RSS",
        "default scenario",
        "scenario default.rhai, whole process",
        "scenario sim/crash_during_transfer.rhai --sim",
        "clients x 5 downloads",
        "--sim: 40 clients",
        "registering one by one",
        "tracker peak RSS",
        "lookups/s",
        "swarm, --sim",
        "swarm, TCP",
        "aria2c",
    ] {
        assert!(
            measures.iter().any(|m| m.contains(expected)),
            "no {expected} row in {measures:?}"
        );
    }
    assert!(
        rows.iter()
            .all(|row| !row.phile.contains("NaN") && !row.ratio.contains("NaN")),
        "{rows:?}"
    );
}
