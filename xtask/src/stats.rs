//! What the benches' runs say: their median, how far that median can be
//! trusted, and what it then says of a target.
//!
//! Why an interval: on a shared 2-vCPU host one client's pairs of runs spread
//! over a third of their value (the download bench's 0.68-1.22), so a median
//! a few percent from a target says little on its own. The interval is the
//! distribution-free one for a median (order statistics and the binomial law:
//! no assumption on the shape of the runs' spread, skewed or not). It assumes
//! the runs independent, of one median, and so covers the runs of one
//! sitting only: a host that changes between sittings (the same agent read
//! 11.5 % lost one hour and -0.4 % the next, docs/performance.md) moves the
//! median itself, which running both sides as a pair, not the interval,
//! absorbs.

/// The middle value of the benches' runs, or the mean of the two middle ones
/// for an even count (the upper one alone read every even count high); NaN
/// for no runs.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

/// An interval that holds the median of what the runs measure with at least
/// [`CONFIDENCE`], from the runs alone.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
    /// The interval's exact confidence (at least [`CONFIDENCE`]).
    pub confidence: f64,
}

pub const CONFIDENCE: f64 = 0.95;

/// The runs' median's interval: the k-th smallest and k-th largest run, for
/// the largest k whose chance of leaving the median outside is at most 5 %
/// (each run falls below the median with probability one half: the count
/// below it is binomial). None under 6 runs: even the whole range then holds
/// the median with less than 95 % (5 runs: 93.75 %).
pub fn median_interval(mut v: Vec<f64>) -> Option<Interval> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let mut best = None;
    // P(fewer than k of n runs below the median), summed as k grows.
    let mut tail = 0.0;
    for k in 1..=n / 2 {
        tail += binomial_half(n, k - 1);
        let confidence = 1.0 - 2.0 * tail;
        // A NaN (were the sums to fail) ends the search too.
        if confidence.is_nan() || confidence < CONFIDENCE {
            break;
        }
        best = Some(Interval { lo: v[k - 1], hi: v[n - k], confidence });
    }
    best
}

/// What runs paired with and without something say of a target on the
/// share it loses (the download bench's throughput: under 3 %).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// The median's whole 95 % interval loses less.
    Met,
    /// Its whole interval loses as much or more.
    NotMet,
    /// The interval spans the target: the pairs spread too widely to tell.
    Undecided,
    /// Under 6 pairs there is no 95 % interval: the median alone, met or not.
    MedianOnly(bool),
}

impl Verdict {
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::NotMet => "NOT met",
            Verdict::Undecided => "undecided",
            Verdict::MedianOnly(true) => "met by the median alone",
            Verdict::MedianOnly(false) => "NOT met by the median alone",
        }
    }

    pub fn says(self) -> String {
        match self {
            Verdict::Met => "met (the whole interval under it)".into(),
            Verdict::NotMet => "NOT met (the whole interval over it)".into(),
            Verdict::Undecided => "undecided (the interval spans it: the pairs spread too widely on this host)".into(),
            Verdict::MedianOnly(_) => format!("{} (under 6 pairs: no 95 % interval)", self.word()),
        }
    }
}

/// The verdict of pair ratios (with / without) on losing under `target` (a
/// share), and the interval of their median it rests on.
pub fn judge(ratios: &[f64], target: f64) -> (Option<Interval>, Verdict) {
    let interval = median_interval(ratios.to_vec());
    let verdict = match interval {
        // Lost is 1 - ratio: the interval's low ratio is its most lost.
        Some(i) if 1.0 - i.lo < target => Verdict::Met,
        Some(i) if 1.0 - i.hi >= target => Verdict::NotMet,
        Some(_) => Verdict::Undecided,
        None => Verdict::MedianOnly(1.0 - median(ratios.to_vec()) < target),
    };
    (interval, verdict)
}

/// P(X = j) for X ~ Binomial(n, 1/2), in logarithms: C(n, j) overflows and
/// 2^-n underflows an f64 past ~1,000 runs.
fn binomial_half(n: usize, j: usize) -> f64 {
    let ln_c: f64 = (0..j).map(|i| ((n - i) as f64 / (i + 1) as f64).ln()).sum();
    (ln_c - n as f64 * std::f64::consts::LN_2).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_an_even_count_is_the_mean_of_its_middle_two() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn binomial_probabilities_sum_to_one() {
        for n in [1, 7, 13, 100] {
            let s: f64 = (0..=n).map(|j| binomial_half(n, j)).sum();
            assert!((s - 1.0).abs() < 1e-12, "n={n}: {s}");
        }
        assert!((binomial_half(4, 2) - 6.0 / 16.0).abs() < 1e-15);
    }

    #[test]
    fn the_interval_is_the_order_statistics_the_binomial_law_names() {
        // 5 runs: the whole range covers the median 93.75 % of the time only.
        assert_eq!(median_interval(vec![1.0, 2.0, 3.0, 4.0, 5.0]), None);
        // 6 and 7 runs: the whole range (96.9 %, 98.4 %).
        let i = median_interval(vec![6.0, 1.0, 5.0, 2.0, 4.0, 3.0]).unwrap();
        assert_eq!((i.lo, i.hi), (1.0, 6.0));
        assert!((i.confidence - (1.0 - 2.0 / 64.0)).abs() < 1e-12);
        let i = median_interval((1..=7).map(f64::from).collect()).unwrap();
        assert_eq!((i.lo, i.hi), (1.0, 7.0));
        // 9 runs: the 2nd and 8th (1 - 2 * 10/512 = 96.1 %); the 3rd and
        // 7th would cover 82 %.
        let i = median_interval((1..=9).rev().map(f64::from).collect()).unwrap();
        assert_eq!((i.lo, i.hi), (2.0, 8.0));
        assert!((i.confidence - (1.0 - 20.0 / 512.0)).abs() < 1e-12);
        // 13 runs: the 3rd and 11th (97.8 %).
        let i = median_interval((1..=13).map(f64::from).collect()).unwrap();
        assert_eq!((i.lo, i.hi), (3.0, 11.0));
        // 100 runs: the 40th and 61st (the textbook's pair for n = 100).
        let i = median_interval((1..=100).map(f64::from).collect()).unwrap();
        assert_eq!((i.lo, i.hi), (40.0, 61.0));
        assert!(i.confidence >= CONFIDENCE && i.confidence < 0.97, "{}", i.confidence);
        // Past where 2^-n underflows an f64: still an interval about the middle.
        let i = median_interval((1..=4000).map(f64::from).collect()).unwrap();
        assert!(i.lo > 1900.0 && i.lo < 2000.0 && i.hi > 2000.0 && i.hi < 2100.0, "{i:?}");
        assert!(i.confidence >= CONFIDENCE, "{}", i.confidence);
    }

    #[test]
    fn the_verdict_rests_on_the_median_s_interval_not_the_median_alone() {
        // Stop 49's whole bench: curl over HTTP/2's nine pairs, median 0.942.
        let h2 = [0.684, 0.953, 1.221, 0.898, 0.766, 0.942, 0.992, 1.019, 0.918];
        let (i, v) = judge(&h2, 0.03);
        assert_eq!(v, Verdict::Undecided);
        assert_eq!(i.map(|i| (i.lo, i.hi)), Some((0.766, 1.019)));
        // reqwest's, every pair but one faster with the agent.
        let rustls = [0.995, 1.065, 1.135, 1.18, 1.146, 1.206, 1.033, 1.149, 1.179];
        assert_eq!(judge(&rustls, 0.03).1, Verdict::Met);
        let slow = [0.80, 0.85, 0.90, 0.91, 0.92, 0.93, 0.95];
        assert_eq!(judge(&slow, 0.03).1, Verdict::NotMet);
        // At the line: 3 % lost at the interval's low end is not met.
        let edge = [0.97, 0.98, 0.99, 1.0, 1.01, 1.02, 1.03];
        assert_eq!(judge(&edge, 0.03).1, Verdict::Undecided);
        let edge = [0.9701, 0.98, 0.99, 1.0, 1.01, 1.02, 1.03];
        assert_eq!(judge(&edge, 0.03).1, Verdict::Met);
        // 3 % lost at the interval's best end: not met.
        let edge = [0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.97];
        assert_eq!(judge(&edge, 0.03).1, Verdict::NotMet);
        let edge = [0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.9701];
        assert_eq!(judge(&edge, 0.03).1, Verdict::Undecided);
        // Too few pairs for an interval: the median alone, and said so.
        assert_eq!(judge(&[0.99, 1.0, 0.96], 0.03).1, Verdict::MedianOnly(true));
        assert_eq!(judge(&[0.90, 0.95], 0.03).1, Verdict::MedianOnly(false));
        assert!(Verdict::MedianOnly(false).says().contains("no 95 % interval"));
    }
}
