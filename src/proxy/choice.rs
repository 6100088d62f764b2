//! The choice of a backend for one request, as a pure function of the candidates (so that
//! the policy is tested without sockets): least outstanding requests from this proxy first,
//! then the least replicated load (the 1-minute load average per CPU of the backend's node),
//! then in turn.

/// One backend that may take a request (borrowed from the membership view: the choice is
/// made per request, and allocates nothing for the backends it does not choose).
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<'a> {
    /// The node that advertises it.
    pub node: &'a str,
    /// Its address, `HOST:PORT`.
    pub addr: &'a str,
    /// Requests this proxy has waiting on it now.
    pub outstanding: usize,
    /// Its node's 1-minute load average per CPU, as replicated.
    pub load_per_cpu: f64,
}

/// Loads closer than this count as equal: load averages move slowly and are sampled every
/// few seconds, so a smaller difference says nothing, and nodes on one machine report the
/// same load (they must share requests in turn, not pile onto the first).
pub const LOAD_RESOLUTION: f64 = 0.1;

fn load_step(load: f64) -> i64 {
    if load.is_finite() && load > 0.0 {
        // Bounded by the cast: a load past i64::MAX steps is as bad as any.
        (load / LOAD_RESOLUTION).floor() as i64
    } else {
        0
    }
}

/// The index in `candidates` of the backend to use, `turn` breaking the remaining ties (a
/// counter the caller increments per request); `None` if there is no candidate.
pub fn pick(candidates: &[Candidate<'_>], turn: usize) -> Option<usize> {
    let key = |c: &Candidate<'_>| (c.outstanding, load_step(c.load_per_cpu));
    let best = candidates.iter().map(key).min()?;
    let ties = candidates.iter().filter(|c| key(c) == best).count();
    let nth = turn % ties.max(1);
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| key(c) == best)
        .nth(nth)
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(node: &str, outstanding: usize, load: f64) -> Candidate<'_> {
        Candidate {
            node,
            addr: node,
            outstanding,
            load_per_cpu: load,
        }
    }

    #[test]
    fn the_backend_with_the_fewest_outstanding_requests_wins() {
        let cs = [c("a", 3, 0.0), c("b", 1, 5.0), c("c", 2, 0.0)];
        assert_eq!(pick(&cs, 0), Some(1));
        assert_eq!(pick(&cs, 7), Some(1));
    }

    #[test]
    fn equal_outstanding_requests_go_to_the_least_loaded_node() {
        let cs = [c("a", 1, 0.9), c("b", 1, 0.2), c("c", 1, 0.5)];
        assert_eq!(pick(&cs, 0), Some(1));
        assert_eq!(pick(&cs, 1), Some(1));
    }

    #[test]
    fn full_ties_are_taken_in_turn() {
        let cs = [c("a", 0, 0.31), c("b", 0, 0.35), c("c", 0, 0.33)];
        let picked: Vec<_> = (0..6).filter_map(|t| pick(&cs, t)).collect();
        assert_eq!(picked, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn no_candidate_means_no_choice_and_odd_loads_do_not_panic() {
        assert_eq!(pick(&[], 3), None);
        let cs = [
            c("a", 0, f64::NAN),
            c("b", 0, f64::INFINITY),
            c("c", 0, -1.0),
        ];
        assert!(pick(&cs, 0).is_some());
    }
}
