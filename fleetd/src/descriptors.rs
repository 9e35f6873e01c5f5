//! File descriptors: the soft limit is raised to the hard one at start, and split into separate
//! budgets for the device broker and the API, so a flood on one listener cannot take the
//! descriptors the other needs (each refuses above its own cap, at once, instead of both
//! failing `accept` with "Too many open files").

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors kept for everything but the two listeners: the database pool, the private
/// cluster's pipes, the data directory, the metrics listener, the runtime.
const RESERVED: u64 = 256;

/// Connections each listener may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DescriptorBudget {
    pub(crate) broker_connections: usize,
    pub(crate) api_connections: usize,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and splits what it allows between the
/// listeners, within their configured caps.
pub(crate) fn raise_and_split(broker_max: usize, api_max: usize) -> DescriptorBudget {
    let limit = raise_soft_limit();
    let budget = split(limit, broker_max, api_max);
    if budget.broker_connections < broker_max || budget.api_connections < api_max {
        tracing::warn!(
            descriptor_limit = limit,
            broker_connections = budget.broker_connections,
            api_connections = budget.api_connections,
            "the descriptor limit is below the listeners' connection caps; lowered them to fit"
        );
    }
    budget
}

/// The soft descriptor limit after raising it as far as the hard limit allows.
fn raise_soft_limit() -> u64 {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft >= hard {
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::info!(from = soft, to = hard, "raised the soft descriptor limit");
            hard
        }
        Err(error) => {
            tracing::warn!(%error, soft, hard, "could not raise the soft descriptor limit");
            soft
        }
    }
}

/// The listeners' shares of `limit` descriptors: their caps when they fit; otherwise the API
/// gets at most a quarter and the broker the rest.
fn split(limit: u64, broker_max: usize, api_max: usize) -> DescriptorBudget {
    let available = usize::try_from(limit.saturating_sub(RESERVED).max(2)).unwrap_or(usize::MAX);
    if broker_max.saturating_add(api_max) <= available {
        return DescriptorBudget {
            broker_connections: broker_max,
            api_connections: api_max,
        };
    }
    let api_connections = api_max.min(available / 4).max(1);
    DescriptorBudget {
        broker_connections: broker_max.min(available - api_connections).max(1),
        api_connections,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_that_fit_are_kept_and_a_small_limit_is_split_without_overlap() {
        assert_eq!(
            split(1_048_576, 20_000, 4096),
            DescriptorBudget {
                broker_connections: 20_000,
                api_connections: 4096
            }
        );
        let small = split(1024, 20_000, 4096);
        assert_eq!(
            small,
            DescriptorBudget {
                broker_connections: 576,
                api_connections: 192
            }
        );
        assert!(small.broker_connections + small.api_connections + 256 <= 1024);
    }
}
