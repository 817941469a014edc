//! Which node leads a cluster, from what each said at a check: the one rule that keeps
//! writes from ever reaching two primaries.

/// What a check found a node to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// It did not answer: it may be down, or cut off from this instance only.
    Unreachable,
    /// In recovery: a replica.
    Replica,
    /// Out of recovery, writing WAL on this timeline.
    Primary { timeline: u32 },
}

/// Where writes go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Election {
    Leader(usize),
    /// No node is out of recovery: a failover is under way, or the cluster is down.
    NoPrimary,
    /// Several nodes are out of recovery on the same newest timeline: which one the HA
    /// manager means is unknowable from here, so writes go to neither until one steps down.
    Split(Vec<usize>),
}

/// The node out of recovery on the newest timeline. Promotion starts a new timeline, so an
/// old primary that has not noticed yet that it was replaced (cut off from the HA manager,
/// say) is on an older one than its successor and never wins.
pub(crate) fn elect(claims: &[Claim]) -> Election {
    let primaries: Vec<(usize, u32)> = claims
        .iter()
        .enumerate()
        .filter_map(|(i, claim)| match *claim {
            Claim::Primary { timeline } => Some((i, timeline)),
            _ => None,
        })
        .collect();
    let Some(newest) = primaries.iter().map(|&(_, timeline)| timeline).max() else {
        return Election::NoPrimary;
    };
    let on_newest: Vec<usize> = primaries
        .into_iter()
        .filter(|&(_, timeline)| timeline == newest)
        .map(|(i, _)| i)
        .collect();
    match on_newest[..] {
        [one] => Election::Leader(one),
        _ => Election::Split(on_newest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Claim::*;

    #[test]
    fn the_one_node_out_of_recovery_leads() {
        assert_eq!(
            elect(&[Replica, Primary { timeline: 3 }, Unreachable]),
            Election::Leader(1)
        );
    }

    #[test]
    fn with_every_node_a_replica_or_down_nothing_leads() {
        assert_eq!(elect(&[Replica, Unreachable, Replica]), Election::NoPrimary);
        assert_eq!(elect(&[]), Election::NoPrimary);
    }

    #[test]
    fn of_two_primaries_the_one_on_the_newer_timeline_leads() {
        // node1 was cut off and has not stepped down; node3 was promoted in its place.
        let claims = [Primary { timeline: 4 }, Replica, Primary { timeline: 5 }];
        assert_eq!(elect(&claims), Election::Leader(2));
    }

    #[test]
    fn two_primaries_on_the_same_timeline_take_no_writes() {
        let claims = [
            Primary { timeline: 5 },
            Primary { timeline: 5 },
            Primary { timeline: 4 },
        ];
        assert_eq!(elect(&claims), Election::Split(vec![0, 1]));
    }
}
