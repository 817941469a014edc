//! What the router is given: connection options, pool bounds and routing limits.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

/// Where the nodes are and how the router treats them. Connection options are the caller's:
/// TLS, credentials, `application_name` and server settings such as `statement_timeout` stay
/// under its control. Read pools add `default_transaction_read_only`.
#[derive(Clone, Debug)]
pub struct Config {
    /// The database servers, and who says which one takes writes.
    pub nodes: Nodes,
    /// Pool sizes and timeouts.
    pub pools: PoolConfig,
    /// How reads are routed and replicas judged.
    pub routing: RoutingConfig,
}

impl Config {
    /// A fixed primary without replicas, with default pools and routing.
    pub fn new(primary: PgConnectOptions) -> Self {
        Self::with(Nodes::Fixed {
            primary,
            replicas: Vec::new(),
        })
    }

    /// Nodes whose roles a high-availability manager (Patroni, say) decides and changes: the
    /// router finds the primary among them at every check and follows it.
    pub fn cluster(nodes: Vec<PgConnectOptions>) -> Self {
        Self::with(Nodes::Cluster(nodes))
    }

    fn with(nodes: Nodes) -> Self {
        Self {
            nodes,
            pools: PoolConfig::default(),
            routing: RoutingConfig::default(),
        }
    }

    /// Adds a replica to a fixed primary, or a node to a cluster.
    #[must_use]
    pub fn replica(mut self, options: PgConnectOptions) -> Self {
        match &mut self.nodes {
            Nodes::Fixed { replicas, .. } => replicas.push(options),
            Nodes::Cluster(nodes) => nodes.push(options),
        }
        self
    }
}

/// The database servers.
#[derive(Clone, Debug)]
#[expect(clippy::large_enum_variant, reason = "built once, at start-up")]
pub enum Nodes {
    /// One primary, named `primary`, which takes every write whatever checks say, and its
    /// streaming replicas, named `replica1`, `replica2`... in this order.
    Fixed {
        /// The node that takes writes.
        primary: PgConnectOptions,
        /// Its streaming replicas.
        replicas: Vec<PgConnectOptions>,
    },
    /// Nodes named `node1`, `node2`... in this order, whose roles change: the one a check finds
    /// out of recovery takes writes, the others serve reads. Run them with synchronous
    /// replication, so a commit the router acknowledges survives a failover. Their write pools
    /// set no `statement_timeout`: a timeout that cancels a commit's wait for the standby
    /// reports the commit as done, though only this node has it.
    Cluster(Vec<PgConnectOptions>),
}

/// Pool bounds. Every wait has a limit, so a node that is down costs a request little.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Connections to the primary for writes.
    pub primary_size: u32,
    /// Connections to each replica, and to the primary for reads that fall back to it.
    pub replica_size: u32,
    /// How long a write waits for a primary connection.
    pub acquire_timeout: Duration,
    /// Shorter than the primary's: a dead replica should cost a read little before the
    /// router moves on.
    pub replica_acquire_timeout: Duration,
    /// How long a replica may take to answer a read before it counts as unreachable and the
    /// read moves on: a partitioned replica never answers, and its server-side
    /// `statement_timeout` cannot fire where nothing reaches it.
    pub replica_read_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            primary_size: 10,
            replica_size: 10,
            acquire_timeout: Duration::from_millis(1500),
            replica_acquire_timeout: Duration::from_millis(250),
            replica_read_timeout: Duration::from_millis(1000),
        }
    }
}

/// Routing limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingConfig {
    /// Sticky mode reads the primary for this long after a session's write.
    pub sticky_window: Duration,
    /// Causal mode waits at most this long for a replica to replay the session's token.
    pub causal_wait: Duration,
    /// How often the monitor checks every replica.
    pub check_interval: Duration,
    /// A replica further behind than this gets no reads.
    pub max_lag: Duration,
    /// In a cluster, how long a write (or a read only the primary may answer) waits for a
    /// primary when there is none, while the monitor checks every node often; then it fails
    /// as unavailable. Keep it under the caller's own request timeout.
    pub failover_wait: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            sticky_window: Duration::from_millis(2000),
            causal_wait: Duration::from_millis(50),
            check_interval: Duration::from_millis(1000),
            max_lag: Duration::from_millis(5000),
            failover_wait: Duration::from_millis(15_000),
        }
    }
}
