//! The fluid lower bound of a swarm (Kumar and Ross): the least time in
//! which one file can reach every downloader, whatever the protocol, given
//! the uploads and downloads of the nodes. Pure.
//!
//! With F the file's size, u_s the seeders' total upload, d_min the lowest
//! download among the N downloaders and u_i each downloader's upload:
//!
//! ```text
//! T >= max(F / u_s, F / d_min, N * F / (u_s + sum(u_i)))
//! ```
//!
//! The seeders must send every byte at least once; the slowest downloader
//! must receive every byte; and all N copies must be uploaded by someone.
//! A rate of 0 means no cap: a term with an uncapped rate in it does not
//! bound anything, and is left out.

use std::collections::BTreeMap;

use crate::review::FluidBound;

/// The bound, in seconds, for `bytes` bytes from seeders with the upload
/// caps `seeder_uploads` to downloaders with the caps (upload, download)
/// `downloaders`; 0 is no cap. 0.0 when no term counts.
pub fn bound(bytes: u64, seeder_uploads: &[u64], downloaders: &[(u64, u64)]) -> f64 {
    let size = bytes as f64;
    let capped = |rates: &mut dyn Iterator<Item = u64>| -> Option<f64> {
        let mut total = 0.0;
        for rate in rates {
            if rate == 0 {
                return None;
            }
            total += rate as f64;
        }
        Some(total)
    };
    let seeders = capped(&mut seeder_uploads.iter().copied()).filter(|_| !seeder_uploads.is_empty());
    let uploads = capped(&mut downloaders.iter().map(|(up, _)| *up));
    let slowest = downloaders.iter().map(|(_, down)| *down).filter(|down| *down > 0).min();
    let mut terms = Vec::new();
    if let Some(seeders) = seeders {
        terms.push(size / seeders);
        if let Some(uploads) = uploads {
            terms.push(downloaders.len() as f64 * size / (seeders + uploads));
        }
    }
    if let Some(slowest) = slowest {
        terms.push(size / slowest as f64);
    }
    terms.into_iter().fold(0.0, f64::max)
}

/// A call of `fluid_bound` in the script, kept for the report.
#[derive(Clone, Debug, PartialEq)]
pub struct BoundAsked {
    /// The file size it was asked for.
    pub bytes: u64,
    /// The downloaders' ids.
    pub downloaders: Vec<u64>,
    /// The bound it returned, in seconds.
    pub bound_secs: f64,
    /// When it was asked, in the run's seconds.
    pub at: f64,
}

/// A download that stored its file, with when it started and ended, in the
/// run's seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Timed {
    /// The downloader.
    pub client: u64,
    /// The file.
    pub file: String,
    /// Its size.
    pub bytes: u64,
    /// When the script asked for it.
    pub started: f64,
    /// When it was stored.
    pub finished: f64,
}

/// Each bound asked, against the download it bounds: the file of that size
/// that every one of its downloaders stored, the last one done before the
/// call (a script that measures first) or else the first one started after
/// it (a script that asks first). The time it took runs from the first of
/// those downloads starting to the last one ending. A bound with no such
/// file is left out.
pub fn against_downloads(asked: &[BoundAsked], downloads: &[Timed]) -> Vec<FluidBound> {
    asked.iter().filter_map(|bound| against_one(bound, downloads)).collect()
}

fn against_one(bound: &BoundAsked, downloads: &[Timed]) -> Option<FluidBound> {
    // Per file of the right size, each downloader's last download of it.
    let mut files: BTreeMap<&str, BTreeMap<u64, &Timed>> = BTreeMap::new();
    for download in downloads {
        if download.bytes == bound.bytes && bound.downloaders.contains(&download.client) {
            files
                .entry(&download.file)
                .or_default()
                .insert(download.client, download);
        }
    }
    let spans = files.into_iter().filter_map(|(file, by_client)| {
        (by_client.len() == bound.downloaders.len()).then(|| {
            let started = by_client.values().map(|d| d.started).fold(f64::INFINITY, f64::min);
            let finished = by_client.values().map(|d| d.finished).fold(0.0, f64::max);
            (file, started, finished)
        })
    });
    let (before, after): (Vec<_>, Vec<_>) = spans.partition(|(_, _, finished)| *finished <= bound.at);
    let latest_before = before.into_iter().max_by(|a, b| a.2.total_cmp(&b.2));
    let first_after = || after.into_iter().min_by(|a, b| a.1.total_cmp(&b.1));
    let (file, started, finished) = latest_before.or_else(first_after)?;
    Some(FluidBound {
        file: file.to_owned(),
        downloaders: bound.downloaders.len() as u64,
        bound_secs: bound.bound_secs,
        measured_secs: finished - started,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    #[test]
    fn the_benchmark_swarm_is_bound_by_the_total_upload() {
        // 1 seeder at 4 MB/s, 31 downloaders at 2 MB/s up and 8 MB/s down, 16 MiB.
        let size = 16 << 20;
        let downloaders = vec![(2 * MB, 8 * MB); 31];
        let expected = 31.0 * size as f64 / (4.0 * MB as f64 + 62.0 * MB as f64);
        assert!((bound(size, &[4 * MB], &downloaders) - expected).abs() < 1e-9);
    }

    #[test]
    fn each_term_can_be_the_one_that_binds() {
        // One downloader: the seeder's upload binds.
        assert_eq!(bound(8 * MB, &[2 * MB], &[(MB, 0)]), 4.0);
        // A slow download binds.
        assert_eq!(bound(8 * MB, &[8 * MB], &[(8 * MB, MB)]), 8.0);
        // Two seeders add up.
        assert_eq!(bound(8 * MB, &[2 * MB, 2 * MB], &[(10 * MB, 0)]), 2.0);
    }

    #[test]
    fn uncapped_rates_bound_nothing() {
        assert_eq!(bound(8 * MB, &[0], &[(0, 0)]), 0.0);
        // An uncapped downloader upload leaves the seeder term.
        assert_eq!(bound(8 * MB, &[MB], &[(0, 0), (MB, 0)]), 8.0);
        // An uncapped seeder leaves the download term.
        assert_eq!(bound(8 * MB, &[0], &[(MB, 4 * MB), (MB, 0)]), 2.0);
        assert_eq!(bound(8 * MB, &[], &[(MB, 0)]), 0.0);
    }

    fn asked(bytes: u64, downloaders: &[u64], at: f64) -> BoundAsked {
        BoundAsked {
            bytes,
            downloaders: downloaders.to_vec(),
            bound_secs: 4.0,
            at,
        }
    }

    fn timed(client: u64, file: &str, bytes: u64, started: f64, finished: f64) -> Timed {
        Timed {
            client,
            file: file.into(),
            bytes,
            started,
            finished,
        }
    }

    #[test]
    fn a_bound_asked_after_the_downloads_measures_the_last_group_before_it() {
        let downloads = [
            timed(1, "old.bin", 100, 0.0, 9.0),
            timed(2, "old.bin", 100, 0.0, 9.0),
            timed(1, "swarm.bin", 100, 10.0, 13.0),
            timed(2, "swarm.bin", 100, 10.5, 15.0),
            // Later, and not asked about: whole files of the same size.
            timed(1, "whole.bin", 100, 20.0, 24.0),
            timed(2, "whole.bin", 100, 24.0, 28.0),
        ];
        let rows = against_downloads(&[asked(100, &[1, 2], 15.0)], &downloads);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].file, "swarm.bin");
        assert_eq!(rows[0].downloaders, 2);
        assert_eq!(rows[0].measured_secs, 5.0);
        assert_eq!(rows[0].bound_secs, 4.0);
    }

    #[test]
    fn a_bound_asked_first_measures_the_first_group_after_it() {
        let downloads = [
            timed(1, "b.bin", 100, 5.0, 8.0),
            timed(2, "b.bin", 100, 5.0, 7.0),
            timed(1, "c.bin", 100, 10.0, 12.0),
            timed(2, "c.bin", 100, 10.0, 12.0),
        ];
        let rows = against_downloads(&[asked(100, &[1, 2], 1.0)], &downloads);
        assert_eq!(rows[0].file, "b.bin");
        assert_eq!(rows[0].measured_secs, 3.0);
    }

    #[test]
    fn a_bound_no_download_matches_is_left_out() {
        let downloads = [
            // Another size, and a file only one of the two stored.
            timed(1, "a.bin", 99, 0.0, 1.0),
            timed(2, "a.bin", 99, 0.0, 1.0),
            timed(1, "b.bin", 100, 0.0, 1.0),
            timed(3, "b.bin", 100, 0.0, 1.0),
        ];
        assert!(against_downloads(&[asked(100, &[1, 2], 5.0)], &downloads).is_empty());
    }
}
