//! Under load: 200 clients download at once while 20 of the 40 holders are
//! killed at random points of their transfers. Every download must end
//! `ok: true` (a holder always survives), every stored copy must be whole,
//! and the log must name every holder a downloader gave up on.

use std::collections::BTreeMap;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::util::run_source_with;

const HOLDERS: u64 = 40;
const KILLED: usize = 20;
const DOWNLOADERS: u64 = 200;
const SIZE: u64 = 256 * 1024;

fn script() -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut victims: Vec<u64> = (1..=HOLDERS).collect();
    let mut faults = String::new();
    for _ in 0..KILLED {
        let victim = victims.remove(rng.random_range(0..victims.len()));
        let after = rng.random_range(1..SIZE);
        faults += &format!("holders[{}].kill_after(\"payload.bin\", {after});\n", victim - 1);
    }
    format!(
        r#"
let t = tracker(0);
let holders = [];
for id in 1..{holders_end} {{
    let c = client(id);
    c.register(t);
    c.write_random("payload.bin", {SIZE});
    c.upload("payload.bin");
    holders.push(c);
}}
let expected = holders[0].sha1("payload.bin");
{faults}
let downloaders = [];
for id in 1001..{downloaders_end} {{
    let c = client(id);
    c.register(t);
    downloaders.push(c);
}}
let transfers = [];
for c in downloaders {{
    transfers.push(c.start_download("payload.bin"));
}}
let results = wait_all(transfers);
for r in results {{
    assert(r.ok, `a download failed while holders survived: ${{r.error}}`);
}}
for c in downloaders {{
    assert(c.sha1("payload.bin") == expected, `client ${{c.id}} stored a bad copy`);
    assert(c.files() == ["payload.bin"], `client ${{c.id}} holds ${{c.files()}}`);
}}
"#,
        holders_end = HOLDERS + 1,
        downloaders_end = 1001 + DOWNLOADERS
    )
}

#[test]
fn two_hundred_downloads_survive_twenty_holders_killed_mid_transfer() {
    let _turn = crate::fixture::heavy_turn_blocking();
    let run = run_source_with(&script(), |_| {});
    if let Some(failure) = &run.outcome.failure {
        panic!("{}", failure.report);
    }
    let events = run.events();
    let killed = events.iter().filter(|e| e["event"] == "killed").count();
    assert!(killed >= KILLED / 2, "only {killed} of the armed faults fired");

    // Per downloader: the holders the tracker chose, in order, and the ones
    // it rejected. Every chosen holder but the one that delivered must have
    // been rejected, by name.
    let mut chosen: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut rejected: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut delivered: BTreeMap<u64, u64> = BTreeMap::new();
    for event in &events {
        let number = |key: &str| event[key].as_u64().unwrap();
        match event["event"].as_str().unwrap() {
            "peer_chosen" if number("client") > 1000 => {
                chosen.entry(number("client")).or_default().push(number("peer"))
            }
            "transfer_rejected" => {
                let downloader: u64 = event["node"].as_str().unwrap().parse().unwrap();
                rejected.entry(downloader).or_default().push(number("peer"));
            }
            "download_finished" if number("from") <= HOLDERS && event["node"].as_str().unwrap().len() == 4 => {
                delivered.insert(event["node"].as_str().unwrap().parse().unwrap(), number("from"));
            }
            _ => {}
        }
    }
    assert_eq!(delivered.len() as u64, DOWNLOADERS);
    let mut rejections = 0;
    for (downloader, peers) in &chosen {
        let (last, earlier) = peers.split_last().unwrap();
        assert_eq!(
            delivered[downloader], *last,
            "{downloader} was delivered by a holder it was not given last"
        );
        assert_eq!(
            rejected.get(downloader).cloned().unwrap_or_default(),
            earlier,
            "{downloader}'s rejections"
        );
        rejections += earlier.len();
    }
    assert!(
        rejections > 0,
        "no transfer was cut: the faults did not strike mid-transfer"
    );
    eprintln!(
        "{killed} holders killed, {rejections} rejections, {} downloads",
        delivered.len()
    );
}
