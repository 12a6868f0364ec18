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
}
